// Tessera dashboard: keeps an open page live through /events (server-sent events).
// No framework: the server renders HTML; this script fetches what changed and swaps it in.
(function () {
  "use strict";
  var body = document.body;
  var page = body.dataset.page;
  if (!window.EventSource || page === "login" || page === "error") return;
  // A finished job's page cannot change: no stream (browsers allow few connections per host).
  if (page === "job" && !body.dataset.live) return;

  var events = new EventSource("/events");
  var busy = false, again = false;

  // Re-fetches this page and replaces its live regions ([data-live][id]) with the fresh ones.
  // Forms and focus outside those regions are left alone.
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (el) {
          var fresh = doc.getElementById(el.id);
          if (fresh && !el.contains(document.activeElement)) el.replaceWith(fresh);
        });
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; setTimeout(refresh, 250); }
      });
  }

  // A job page: fetches the tests finished since the last event seen and adds their rows.
  function follow(id) {
    var seq = Number(body.dataset.seq || 0);
    var rows = document.getElementById("test-rows");
    function update() {
      if (busy) { again = true; return; }
      busy = true;
      var url = "/jobs/" + encodeURIComponent(id) + "?since=" + seq;
      fetch(url, { headers: { Accept: "text/html" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (text) {
          if (!text) return;
          var doc = new DOMParser().parseFromString(text, "text/html");
          var next = Number(doc.body.dataset.seq || seq);
          if (next > seq) seq = next;
          var summary = doc.getElementById("summary"), here = document.getElementById("summary");
          if (summary && here) here.replaceWith(summary);
          var empty = document.getElementById("no-tests");
          doc.querySelectorAll("#test-rows > tr").forEach(function (row) {
            // A test is its key in its matrix cell.
            var key = row.getAttribute("data-test"), cell = row.getAttribute("data-cell"), old = null;
            rows.querySelectorAll("tr[data-test]").forEach(function (r) {
              if (r.getAttribute("data-test") === key && r.getAttribute("data-cell") === cell) old = r;
            });
            var added = document.importNode(row, true);
            added.classList.add("fresh");
            if (old) old.replaceWith(added); else rows.appendChild(added);
            if (empty) { empty.remove(); empty = null; }
          });
          if (!doc.body.dataset.live) body.removeAttribute("data-live");
        })
        .catch(function () {})
        .then(function () {
          busy = false;
          if (again) { again = false; update(); }
        });
    }
    events.addEventListener("job", function (e) {
      var change = JSON.parse(e.data);
      if (change.id === id && change.seq > seq) update();
    });
    events.addEventListener("recorded", function (e) {
      if (JSON.parse(e.data).id === id) update();
    });
    // Changes dropped (a lag) or never sent (the stream was down): fetch what is new.
    events.addEventListener("lagged", update);
    events.addEventListener("open", update);
  }

  if (page === "job") {
    follow(body.dataset.job);
  } else if (page === "fleet") {
    events.addEventListener("tick", refresh);
    events.addEventListener("lagged", refresh);
    events.addEventListener("open", refresh);
  } else {
    var pending = null;
    var soon = function () {
      if (pending) return;
      pending = setTimeout(function () { pending = null; refresh(); }, 300);
    };
    events.addEventListener("job", soon);
    events.addEventListener("recorded", soon);
    events.addEventListener("lagged", soon);
    events.addEventListener("open", soon);
    if (page === "builds") events.addEventListener("tick", soon);
  }
})();
