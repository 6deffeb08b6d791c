// convscope gallery: keyboard navigation and the layer page's tile toggle. No dependencies.
(function () {
  "use strict";
  var body = document.body;

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
