// convscope gallery: keyboard navigation, the unit page's missing pictures computed on demand,
// and the layer page's tile toggle. No dependencies.
(function () {
  "use strict";
  var body = document.body;

  // Unit page: ask the server for the pictures the atlas lacks, poll, swap each grey tile for
  // its picture when it is ready (POST/GET /api/layers/{layer}/units/{unit}/fill).
  var unitPage = document.getElementById("unit-page");
  var fillUrl = unitPage && unitPage.dataset.fillUrl;
  if (fillUrl && window.fetch) {
    var tiles = function () { return unitPage.querySelectorAll(".missing[data-fill]"); };
    var say = function (text, title) {
      tiles().forEach(function (t) { t.textContent = text; if (title) t.title = title; });
    };
    var swap = function (files) {
      tiles().forEach(function (t) {
        var url = files[t.dataset.fill];
        if (!url) return;
        var img = document.createElement("img");
        img.className = t.className.replace(/\bmissing\b/, "").trim();
        img.alt = t.dataset.alt || "";
        img.decoding = "async";
        img.src = url;
        t.replaceWith(img);
      });
    };
    var answer = function (r) {
      return r.json().then(function (data) {
        if (!r.ok && data.error) throw new Error(data.error);
        return data;
      });
    };
    var step = function (data) {
      if (data.status === "done") {
        swap(data.files || {});
        if (tiles().length) say("not computed");
        unitPage.dataset.fill = "done";
        return;
      }
      if (data.status === "error") throw new Error(data.error);
      swap(data.files || {});  // the projections come before the feature visualization
      if (data.status === "queued" && data.place) {
        say("queued: place " + data.place + " in the queue (units are computed one at a time)");
      } else {
        say(data.queue > 1 ? "computing… (" + (data.queue - 1) + " more units waiting)" : "computing…");
      }
      setTimeout(function () { fetch(fillUrl, { credentials: "same-origin" }).then(answer).then(step).catch(fail); }, 600);
    };
    var fail = function (err) {
      unitPage.dataset.fill = "error";
      say("could not be computed", String(err.message || err));
    };
    say("computing…");
    fetch(fillUrl, { method: "POST", credentials: "same-origin" }).then(answer).then(step).catch(fail);
  }

  // Layer page of an atlas whose patches are cut on demand: ask for the top patches, reload when cut.
  var grid = document.getElementById("units");
  var topsUrl = grid && grid.dataset.fillUrl;
  if (topsUrl && window.fetch) {
    var note = document.getElementById("tops-cutting");
    var poll = function (r) {
      return r.json().then(function (data) {
        if (data.status === "done") { window.location.reload(); return; }
        if (data.status === "error" || (!r.ok && data.error)) { if (note) note.textContent = "Top patches could not be cut: " + data.error; return; }
        var again = data.status === "missing" ? { method: "POST", credentials: "same-origin" } : { credentials: "same-origin" };
        setTimeout(function () { fetch(topsUrl, again).then(poll); }, 700);
      });
    };
    fetch(topsUrl, { method: "POST", credentials: "same-origin" }).then(poll);
  }

  // Arrow keys step like a slideshow: ← previous, → next, ↑ up one level.
  document.addEventListener("keydown", function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey || e.shiftKey) return;
    var t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    var where = { ArrowLeft: body.dataset.prev, ArrowRight: body.dataset.next, ArrowUp: body.dataset.up }[e.key];
    if (where) { e.preventDefault(); window.location.href = where; }
  });

  // Layer page: show each tile's top patch, projection or feature visualization.
  var buttons = document.querySelectorAll("[data-view]");
  if (!buttons.length) return;
  var KEY = "convscope-view";

  function show(view) {
    buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.view === view)); });
    var grid = document.getElementById("units");
    if (grid) grid.dataset.view = view;
    document.querySelectorAll(".tile").forEach(function (tile) {
      var url = tile.dataset[view];
      var img = tile.querySelector("img");
      var missing = tile.querySelector(".missing");
      if (url) {
        if (!img) { img = document.createElement("img"); img.alt = tile.title; tile.insertBefore(img, tile.firstChild); }
        if (img.getAttribute("src") !== url) img.src = url;
        if (missing) missing.remove();
      } else {
        if (img) img.remove();
        if (!missing) {
          missing = document.createElement("span");
          missing.className = "missing";
          missing.textContent = "not computed yet";
          tile.insertBefore(missing, tile.firstChild);
        }
      }
    });
    try { sessionStorage.setItem(KEY, view); } catch (err) { /* storage off: fine */ }
  }

  buttons.forEach(function (b) { b.addEventListener("click", function () { show(b.dataset.view); }); });
  var saved = null;
  try { saved = sessionStorage.getItem(KEY); } catch (err) { /* ignore */ }
  if (saved && saved !== "patch" && document.querySelector('[data-view="' + saved + '"]')) show(saved);
})();
