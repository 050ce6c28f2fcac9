// Zeitwork console: progressive enhancement only (every page works without it).
// - <ol data-stream="URL"> lists follow the API's Server-Sent Events (the session cookie
//   authenticates them); lines are added as text, never as HTML.
// - An event about a release, rollout or instance refreshes the app page's summary,
//   releases and instances sections in place (unless focus is inside one).
// - Forms with data-confirm ask first; a flash message takes focus.
"use strict";
(function () {
  var MAX_LINES = 500;

  function clock(iso) {
    var when = new Date(iso);
    return isNaN(when) ? "" : when.toISOString().slice(11, 19);
  }

  function short(id) { return id ? String(id).slice(0, 8) : "-"; }

  var describe = {
    events: function (e) {
      return { text: clock(e.created_at) + "  " + e.kind + "  " + e.message, level: e.level };
    },
    logs: function (r) {
      if (r.notice) { return { text: r.notice, level: "warning" }; }
      return { text: clock(r.ts) + "  " + (r.release || "-") + " " + short(r.instance_id) +
        "  " + r.line, level: "" };
    }
  };

  function append(list, item) {
    var atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 8;
    var li = document.createElement("li");
    li.textContent = item.text;
    if (item.level) { li.className = item.level; }
    list.appendChild(li);
    while (list.children.length > MAX_LINES) { list.removeChild(list.firstChild); }
    if (atEnd) { list.scrollTop = list.scrollHeight; }
  }

  var refreshTimer = null;
  function refreshSoon() {
    if (refreshTimer) { return; }
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      fetch(location.pathname, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) { return; }
          var fresh = new DOMParser().parseFromString(html, "text/html");
          ["summary", "releases", "instances"].forEach(function (id) {
            var now = document.getElementById(id), next = fresh.getElementById(id);
            if (now && next && !now.contains(document.activeElement)) { now.replaceWith(next); }
          });
          bindConfirms(document);
        })
        .catch(function () { /* the next event tries again */ });
    }, 400);
  }

  function follow(list) {
    var kind = list.id, state = document.getElementById(kind + "-state");
    var source = new EventSource(list.dataset.stream, { withCredentials: true });
    source.onopen = function () { if (state) { state.textContent = "Live."; } };
    source.onerror = function () { if (state) { state.textContent = "Reconnecting…"; } };
    source.onmessage = function (message) {
      var record;
      try { record = JSON.parse(message.data); } catch (err) { return; }
      append(list, describe[kind](record));
      if (kind === "events" && /^(release|rollout|instance)\./.test(record.kind || "")) {
        refreshSoon();
      }
    };
  }

  function bindConfirms(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      if (form.dataset.bound) { return; }
      form.dataset.bound = "1";
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("ol[data-stream]").forEach(function (list) {
      if (describe[list.id]) { follow(list); }
    });
    bindConfirms(document);
    var flash = document.querySelector("[data-focus]");
    if (flash) { flash.focus(); }
  });
})();
