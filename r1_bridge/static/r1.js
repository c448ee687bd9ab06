/* The R1 creation: push-to-talk (or typing) in, the reply shown large and spoken.
 * Written for the R1's Chrome 101 WebView: plain ES2017, no modules, no AbortController.
 * Device hooks used when present: creationStorage.secure (the token, Base64),
 * CreationVoiceHandler (speech to text), PluginMessageHandler (speech out), and the
 * scrollUp / scrollDown / sideClick / longPressStart / longPressEnd window events. */
(function () {
  "use strict";
  var API = document.body.getAttribute("data-api");
  var CHECK = document.body.getAttribute("data-check");
  var MAX_WAIT = parseFloat(document.body.getAttribute("data-max-wait")) || 20;
  var TOKEN_KEY = "lam_token";
  var token = null;
  var listening = false;
  var busy = false;
  var heardTimer = null;

  function $(id) { return document.getElementById(id); }

  /* -- token storage: the device's secure store, else localStorage (desktop browsers) -- */
  function secureStore() {
    return window.creationStorage && window.creationStorage.secure ? window.creationStorage.secure : null;
  }

  function loadToken() {
    var store = secureStore();
    if (store) {
      return Promise.resolve(store.getItem(TOKEN_KEY)).then(function (value) {
        return value ? atob(value) : null;
      });
    }
    return Promise.resolve(window.localStorage.getItem(TOKEN_KEY));
  }

  function saveToken(value) {
    token = value;
    var store = secureStore();
    if (store) { return Promise.resolve(store.setItem(TOKEN_KEY, btoa(value))); }
    window.localStorage.setItem(TOKEN_KEY, value);
    return Promise.resolve();
  }

  function forgetToken() {
    token = null;
    var store = secureStore();
    if (store) { return Promise.resolve(store.removeItem(TOKEN_KEY)); }
    window.localStorage.removeItem(TOKEN_KEY);
    return Promise.resolve();
  }

  /* -- views -------------------------------------------------------------------------- */
  function show(view, why) {
    $("setup").hidden = view !== "setup";
    $("main").hidden = view !== "main";
    if (view === "setup") {
      $("setup-status").textContent = why || "";
      $("token").focus();
    }
  }

  function status(text) { $("status").textContent = text || ""; }

  function addLine(text, kind) {
    var line = document.createElement("p");
    line.className = kind;
    line.textContent = text;
    $("log").appendChild(line);
    while ($("log").children.length > 20) { $("log").removeChild($("log").firstChild); }
    $("log").scrollTop = $("log").scrollHeight;
    return line;
  }

  function speak(text) {
    if (window.PluginMessageHandler && window.PluginMessageHandler.postMessage) {
      window.PluginMessageHandler.postMessage(JSON.stringify({message: text, useLLM: false, wantsR1Response: true}));
    }
  }

  /* -- talking to the bridge ------------------------------------------------------------ */
  function withTimeout(promise, seconds) {
    return Promise.race([promise, new Promise(function (resolve, reject) {
      setTimeout(function () { reject(new Error("The bridge did not answer in time.")); }, seconds * 1000);
    })]);
  }

  /* A request with ``bearer``; a 401 comes back as an error whose ``refused`` says why. */
  function request(method, url, bearer, body) {
    var options = {method: method, headers: {"Authorization": "Bearer " + bearer}, cache: "no-store"};
    if (body) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return withTimeout(fetch(url, options), MAX_WAIT + 10).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (response.ok) { return data; }
        var error = new Error(data.error || ("Error " + response.status));
        error.refused = response.status === 401;
        throw error;
      });
    }, function (error) {
      throw new Error(error.message === "The bridge did not answer in time." ? error.message
        : "Cannot reach the bridge (" + error.message + ").");
    });
  }

  function call(method, url, body) {
    return request(method, url, token, body).catch(function (error) {
      if (error.refused) {
        var why = "The bridge refused the saved token (" + error.message + "). Enter a new one.";
        forgetToken();
        show("setup", why);
        error.message = why;
      }
      throw error;
    });
  }

  /* Save a token only after the bridge accepted it, else say why not. */
  function checkAndSave(value) {
    $("save-token").disabled = true;
    $("setup-status").textContent = "Checking the token…";
    return request("GET", CHECK, value)
      .then(function () { return saveToken(value); })
      .then(function () { $("token").value = ""; show("main"); })
      .catch(function (error) {
        $("setup-status").textContent = error.refused
          ? "The bridge refused this token: " + error.message + ". Check it and try again."
          : error.message;
      })
      .then(function () { $("save-token").disabled = false; });
  }

  function finish(state, tries) {
    if (state.status !== "pending") { return state; }
    if (tries <= 0) { throw new Error("Still working on it; no answer yet."); }
    return call("GET", API + "/" + encodeURIComponent(state.id) + "/status?wait=" + MAX_WAIT)
      .then(function (next) { return finish(next, tries - 1); });
  }

  function send(text) {
    text = (text || "").trim();
    if (!text || busy) { return; }
    busy = true;
    addLine(text, "asked");
    status("Working…");
    $("typed").value = "";
    call("POST", API, {prompt: text, source: "r1", wait: MAX_WAIT})
      .then(function (state) { return finish(state, 3); })
      .then(function (state) {
        var reply = state.response || "Done.";
        addLine(reply, state.result && state.result.success ? "reply" : "reply failed");
        status("");
        speak(reply);
      })
      .catch(function (error) {
        addLine(error.message, "reply failed");
        status("");
      })
      .then(function () { busy = false; });
  }

  /* -- push to talk ---------------------------------------------------------------------- */
  function startListening() {
    if (listening || busy) { return; }
    if (!(window.CreationVoiceHandler && window.CreationVoiceHandler.postMessage)) {
      status("No microphone here: type instead.");
      $("typed").focus();
      return;
    }
    listening = true;
    $("talk").classList.add("active");
    $("talk").textContent = "Listening…";
    status("");
    window.CreationVoiceHandler.postMessage("start");
  }

  function stopListening() {
    if (!listening) { return; }
    listening = false;
    $("talk").classList.remove("active");
    $("talk").textContent = "Hold to talk";
    window.CreationVoiceHandler.postMessage("stop");
    status("…");
    clearTimeout(heardTimer);
    heardTimer = setTimeout(function () {
      status("I did not catch that: type it instead.");
      $("typed").focus();
    }, 8000);
  }

  window.onPluginMessage = function (data) {
    if (!data) { return; }
    if (data.type === "sttEnded") {
      clearTimeout(heardTimer);
      status("");
      send(data.transcript);
    }
  };

  /* -- the R1's hardware: side button and scroll wheel ------------------------------------ */
  window.addEventListener("longPressStart", startListening);
  window.addEventListener("longPressEnd", stopListening);
  window.addEventListener("sideClick", function () {
    if ($("main").hidden) { $("save-token").click(); return; }
    if ($("typed").value.trim()) { send($("typed").value); }
    else if (listening) { stopListening(); }
    else { startListening(); }
  });
  window.addEventListener("scrollUp", function () { $("log").scrollTop -= 48; });
  window.addEventListener("scrollDown", function () { $("log").scrollTop += 48; });

  /* -- on screen controls ---------------------------------------------------------------- */
  $("talk").addEventListener("mousedown", startListening);
  $("talk").addEventListener("touchstart", function (event) { event.preventDefault(); startListening(); });
  $("talk").addEventListener("mouseup", stopListening);
  $("talk").addEventListener("mouseleave", stopListening);
  $("talk").addEventListener("touchend", function (event) { event.preventDefault(); stopListening(); });
  $("send").addEventListener("click", function () { send($("typed").value); });
  $("typed").addEventListener("keydown", function (event) {
    if (event.key === "Enter") { send($("typed").value); }
  });
  $("save-token").addEventListener("click", function () {
    var value = $("token").value.trim();
    if (!value) { $("setup-status").textContent = "Paste a token first."; return; }
    checkAndSave(value);
  });

  /* -- start: a token in the URL fragment (from pairing) is stored, then removed ---------- */
  var paired = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  var ready = paired ? saveToken(decodeURIComponent(paired[1])).then(function () {
    history.replaceState(null, "", window.location.pathname);
    return token;
  }) : loadToken();
  ready.then(function (value) {
    token = value;
    show(token ? "main" : "setup");
  }).catch(function () { show("setup"); });
})();
