// rlhfkit labelling page: keyboard shortcuts, ranking by keys / drag and drop / buttons, idempotency keys.
// Plain JS, no dependencies. The server renders the texts (escaped); this file never inserts HTML.
(function () {
  "use strict";
  var judge = document.getElementById("judge");
  var busy = false; // one submission per page: a second key press must not post twice

  function byId(id) { return document.getElementById(id); }
  function say(text) { var m = byId("message"); if (m) m.textContent = text; }
  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.prototype.map.call(b, function (x) { return ("0" + x.toString(16)).slice(-2); }).join("");
  }
  function send(form, submitter) {
    if (busy || !form) return;
    if (submitter) form.requestSubmit(submitter); else form.requestSubmit();
  }
  ["skip-form", "undo-form"].forEach(function (id) {
    var f = byId(id);
    if (f) f.addEventListener("submit", function () { busy = true; });
  });

  // The key is made once per page view: a retried post of this page (double click, reload of the POST)
  // carries the same key, so the server stores the judgement once.
  var key = byId("key");
  if (key && !key.value) key.value = newKey();

  var mode = judge ? judge.dataset.mode : null;
  var list = byId("order");
  var picked = 0;      // ranking: how many responses were placed by number keys (the top `picked` slots)
  var touched = false; // ranking: the annotator has ordered something (keys, drag or buttons)

  function items() { return list ? Array.prototype.slice.call(list.children) : []; }
  function refresh() {
    items().forEach(function (li, i) {
      li.querySelector(".rank").textContent = "#" + (i + 1);
      li.classList.toggle("picked", i < picked);
    });
  }
  function pick(pos) {
    var all = items();
    var li = all.filter(function (x) { return x.dataset.pos === String(pos); })[0];
    if (!li || all.indexOf(li) < picked) return;
    list.insertBefore(li, all[picked]);
    picked += 1;
    if (picked === all.length - 1) picked = all.length; // the last one is implied
    touched = true;
    refresh();
  }
  function unpick() {
    var n = items().length;
    picked = picked === n ? Math.max(0, n - 2) : Math.max(0, picked - 1);
    refresh();
  }
  function move(li, delta) {
    if (delta < 0 && li.previousElementSibling) list.insertBefore(li, li.previousElementSibling);
    if (delta > 0 && li.nextElementSibling) list.insertBefore(li.nextElementSibling, li);
    touched = true;
    picked = 0;
    refresh();
  }

  if (list) {
    list.addEventListener("click", function (e) {
      var b = e.target.closest("button");
      if (b) move(b.closest("li"), b.classList.contains("up") ? -1 : 1);
    });
    var dragged = null;
    list.addEventListener("dragstart", function (e) {
      dragged = e.target.closest("li");
      dragged.classList.add("dragging");
      e.dataTransfer.effectAllowed = "move";
      e.dataTransfer.setData("text/plain", dragged.dataset.pos);
    });
    list.addEventListener("dragover", function (e) {
      e.preventDefault();
      var over = e.target.closest("li");
      if (!dragged || !over || over === dragged) return;
      var r = over.getBoundingClientRect();
      list.insertBefore(dragged, e.clientY > r.top + r.height / 2 ? over.nextSibling : over);
    });
    list.addEventListener("drop", function (e) { e.preventDefault(); });
    list.addEventListener("dragend", function () {
      if (dragged) dragged.classList.remove("dragging");
      dragged = null;
      touched = true;
      picked = 0;
      refresh();
    });
  }

  if (judge) {
    judge.addEventListener("submit", function (e) {
      if (busy) { e.preventDefault(); return; }
      if (mode === "ranking") {
        if (!touched) {
          e.preventDefault();
          say("Rank the responses first: number keys, drag and drop, or the arrows.");
          return;
        }
        byId("ranking").value = items().map(function (li) { return li.dataset.id; }).join(",");
      }
      busy = true;
    });
  }

  // Acceptability ticks are optional: the form says it collected marks only once one was touched,
  // so an annotator who ignores the boxes leaves no marks rather than "nothing is acceptable".
  document.querySelectorAll('input[name="acceptable"]').forEach(function (box) {
    box.addEventListener("change", function () { byId("marks").value = "1"; });
  });

  var PAIR_KEYS = { "1": "choose-a", "2": "choose-b", "t": "choose-tie", "b": "choose-both-bad" };
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type !== "checkbox"))) {
      if (e.key === "Escape") t.blur(); // leave the note; shortcuts work again
      return;
    }
    if (busy) return;
    var k = e.key;
    if (k === "u") { e.preventDefault(); send(byId("undo-form")); return; }
    if (!judge) return;
    if (k === "s") { e.preventDefault(); send(byId("skip-form")); return; }
    if (k === "h") { e.preventDefault(); byId("flag").checked = !byId("flag").checked; return; }
    if (k === "n") { e.preventDefault(); byId("note").focus(); return; }
    if (mode === "pairwise" && PAIR_KEYS[k]) { e.preventDefault(); send(judge, byId(PAIR_KEYS[k])); return; }
    if (mode !== "ranking") return;
    if (/^[1-9]$/.test(k)) { e.preventDefault(); pick(Number(k)); }
    else if (k === "Backspace") { e.preventDefault(); unpick(); }
    else if (k === "Enter") { e.preventDefault(); send(judge, byId("submit-ranking")); }
  });
})();
