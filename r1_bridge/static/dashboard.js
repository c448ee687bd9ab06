/* The admin dashboard: agents, a live stream of the bus, and a prompt box.
 * It calls the same API as every client, authenticated by the session and its CSRF token. */
(function () {
  "use strict";
  var CSRF = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  var MAX_LINES = 300;
  var refreshTimer = null;

  function $(id) { return document.getElementById(id); }

  function api(method, url, body) {
    var options = {method: method, headers: {"X-CSRF-Token": CSRF}, credentials: "same-origin"};
    if (body) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).then(function (response) {
      return response.json().then(function (data) {
        if (response.status === 401) { window.location = "/login?next=/"; }
        if (!response.ok && !data.status) { throw new Error(data.error || ("Error " + response.status)); }
        return data;
      });
    });
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text;
    if (className) { td.className = className; }
    row.appendChild(td);
  }

  function ago(iso) {
    var seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 90) { return Math.round(seconds) + "s ago"; }
    return seconds < 5400 ? Math.round(seconds / 60) + "m ago" : Math.round(seconds / 3600) + "h ago";
  }

  function renderAgents(data) {
    var body = $("agents").tBodies[0];
    body.textContent = "";
    if (!data.workers.length) {
      var empty = document.createElement("tr");
      empty.className = "empty";
      var td = document.createElement("td");
      td.colSpan = 6;
      td.textContent = "No agent has announced itself yet.";
      empty.appendChild(td);
      body.appendChild(empty);
      return;
    }
    data.workers.forEach(function (worker) {
      var row = document.createElement("tr");
      row.setAttribute("data-agent", worker.worker_id);
      cell(row, worker.worker_id);
      cell(row, worker.status, "state " + worker.status);
      cell(row, worker.location || "-");
      cell(row, worker.status === "online" ? worker.current_tasks + "/" + worker.max_tasks : "-");
      cell(row, Object.keys(worker.actions).sort().map(function (name) {
        return name + ": " + worker.actions[name].join(", ");
      }).join("; ") || "-");
      cell(row, ago(worker.last_heartbeat));
      body.appendChild(row);
    });
  }

  function renderHealth(data) {
    $("health").textContent = data.status;
    $("health").className = "badge " + data.status;
    $("health-detail").textContent = "broker " + data.broker + " · coordinator " + data.coordinator + " · " +
      data.online_workers + "/" + data.workers + " agents online · " + data.stats.total_prompts +
      " prompts relayed · version " + data.version;
  }

  function refresh() {
    api("GET", "/api/workers").then(renderAgents).catch(function () {});
    api("GET", "/api/health").then(renderHealth).catch(function () {});
  }

  function refreshSoon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, 150);
  }

  /* A reply line reads "<prompt id> <status>: <sentence>". */
  function failedReply(event) {
    return event.kind === "reply" && /^\S+ (failed|partial|rejected):/.test(event.text);
  }

  function addEvent(event) {
    var item = document.createElement("li");
    item.className = "event kind-" + event.kind + (failedReply(event) ? " failed" : "");
    var time = document.createElement("time");
    time.textContent = new Date(event.ts * 1000).toTimeString().slice(0, 8);
    var kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = event.kind;
    var text = document.createElement("span");
    text.className = "text";
    text.textContent = event.text;
    item.appendChild(time);
    item.appendChild(kind);
    item.appendChild(text);
    var stream = $("stream");
    stream.insertBefore(item, stream.firstChild);
    while (stream.children.length > MAX_LINES) { stream.removeChild(stream.lastChild); }
    if (event.kind === "agent" || event.kind === "coordinator" || event.kind === "reply") { refreshSoon(); }
  }

  function follow() {
    var source = new EventSource("/events");
    source.onopen = function () {
      $("stream-state").textContent = "live";
      $("stream-state").className = "badge healthy";
    };
    source.onerror = function () {
      $("stream-state").textContent = "reconnecting";
      $("stream-state").className = "badge degraded";
    };
    source.onmessage = function (message) { addEvent(JSON.parse(message.data)); };
  }

  $("prompt-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var text = $("prompt").value.trim();
    if (!text) { return; }
    $("send").disabled = true;
    $("reply").className = "reply";
    $("reply").textContent = "Working…";
    api("POST", "/api/prompt", {prompt: text, source: "dashboard", wait: 30})
      .then(function (state) {
        $("reply").textContent = state.response || "Still working on it (prompt " + state.id + ").";
        $("reply").className = "reply " + (state.result && state.result.success ? "ok" : "failed");
        $("prompt").value = "";
      })
      .catch(function (error) {
        $("reply").textContent = error.message;
        $("reply").className = "reply failed";
      })
      .then(function () { $("send").disabled = false; });
  });

  refresh();
  setInterval(refresh, 15000);
  follow();
})();
