// convscope search pages: the picture of why (Grad-CAM, or a unit's receptive field) over a
// result on hover or click, or over every result at once. No dependencies.
(function () {
  "use strict";
  var hits = Array.prototype.filter.call(document.querySelectorAll(".hit"), function (h) { return h.dataset.cam; });
  if (!hits.length) return;
  var KEY = "convscope-search-show";
  var HOVER_DELAY = 120; // ms: sweeping the pointer over the grid asks the server for nothing

  // The picture's <img>, made (and so fetched, then cached by the server) on first use.
  function picture(hit) {
    var img = hit.querySelector("img.cam");
    if (img) return img;
    var pic = hit.querySelector(".pic");
    img = document.createElement("img");
    img.className = "cam";
    img.alt = pic.title.replace(/ \(hover.*$/, "");
    hit.classList.add("loading");
    img.addEventListener("load", function () { hit.classList.remove("loading"); hit.classList.add("cam-ready"); });
    img.addEventListener("error", function () { hit.classList.remove("loading"); hit.classList.add("cam-failed"); });
    img.src = hit.dataset.cam;
    pic.appendChild(img);
    return img;
  }

  function mark(hit, name, on) {
    if (on) picture(hit);
    hit.classList.toggle(name, on);
    if (name === "pinned") hit.querySelector(".pic").setAttribute("aria-pressed", String(on));
  }

  hits.forEach(function (hit) {
    var pic = hit.querySelector(".pic");
    var timer = null;
    pic.addEventListener("mouseenter", function () {
      timer = setTimeout(function () { mark(hit, "hover", true); }, HOVER_DELAY);
    });
    pic.addEventListener("mouseleave", function () { clearTimeout(timer); mark(hit, "hover", false); });
    pic.addEventListener("click", function () { mark(hit, "pinned", !hit.classList.contains("pinned")); });
  });

  // The toolbar: the photo or the picture of why, on every result at once.
  var buttons = document.querySelectorAll("[data-show]");
  function show(what) {
    buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.show === what)); });
    hits.forEach(function (hit) { mark(hit, "pinned", what === "cam"); });
    try { sessionStorage.setItem(KEY, what); } catch (err) { /* storage off: fine */ }
  }
  buttons.forEach(function (b) { b.addEventListener("click", function () { show(b.dataset.show); }); });
  var saved = null;
  try { saved = sessionStorage.getItem(KEY); } catch (err) { /* ignore */ }
  if (saved === "cam") show("cam");
})();

// Teach a concept: mark results "this one" or "not this one", name them, and post the marked
// entries to /api/concepts/NAME (the name is then a word of the search box).
(function () {
  "use strict";
  var hits = document.querySelectorAll(".hit[data-entry]");
  if (!hits.length) return;
  var bar = document.createElement("form");
  bar.className = "teach-bar";
  bar.hidden = true;
  bar.innerHTML = '<span class="count"></span> <label>Teach as <input name="name" required maxlength="64" ' +
    'placeholder="rex, our kitchen…"></label> <button type="submit">Teach</button> <span class="result" role="status"></span>';
  document.body.appendChild(bar);
  var count = bar.querySelector(".count"), result = bar.querySelector(".result");

  function marked(kind) {
    return Array.prototype.filter.call(hits, function (h) { return h.dataset.marked === kind; })
      .map(function (h) { return Number(h.dataset.entry); });
  }
  function update() {
    var yes = marked("example").length, no = marked("counter").length;
    count.textContent = yes + " this one, " + no + " not this one";
    bar.hidden = !(yes || no);
  }
  hits.forEach(function (hit) {
    hit.querySelectorAll("[data-mark]").forEach(function (b) {
      b.addEventListener("click", function () {
        var on = hit.dataset.marked !== b.dataset.mark;
        if (on) hit.dataset.marked = b.dataset.mark; else delete hit.dataset.marked;
        hit.querySelectorAll("[data-mark]").forEach(function (o) {
          o.setAttribute("aria-pressed", String(on && o === b));
        });
        update();
      });
    });
  });
  bar.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var name = bar.elements.name.value.trim();
    result.textContent = "teaching…";
    fetch("/api/concepts/" + encodeURIComponent(name), {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({examples: marked("example"), counter: marked("counter")})
    }).then(function (r) { return r.json(); }).then(function (d) {
      result.textContent = "";
      if (d.error) { result.textContent = d.error; return; }
      var a = document.createElement("a");
      a.href = "/search?q=" + encodeURIComponent(d.concept);
      a.textContent = "taught “" + d.concept + "” (" + d.examples + " examples): search it";
      var page = document.createElement("a");
      page.href = d.url;
      page.textContent = "its page";
      result.append(a, " · ", page);
    }).catch(function (err) { result.textContent = "could not teach: " + err; });
  });
})();
