// The chat web client: CHAT/1 (docs/PROTOCOL.md) over a WebSocket to the
// server that served this page, one text frame per line. Every piece of
// text from the network enters the page through textContent, never as
// HTML. The password is kept in this closure only, never in storage, so
// that a dropped connection can log in again by itself.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  const ui = {
    state: $("#state"), me: $("#me"), busy: $("#busy"), logout: $("#logout"),
    loginView: $("#login-view"), loginForm: $("#login"), loginError: $("#login-error"),
    username: $("input[name=username]"), password: $("input[name=password]"),
    chatView: $("#chat-view"), messages: $("#messages"), commandForm: $("#command"),
    line: $("input[name=line]"), people: $("#people"), online: $("#online"),
    refresh: $("#refresh"),
  };

  const HELP = [
    "message <user> <text>: a private message",
    "broadcast <text>: everyone online, you included",
    "broadcast all <text>: every account; offline ones get it later",
    "broadcast user <u1> <u2> ... message <text>: those users",
    "whoelse: who is online · wholast <minutes>: who was",
    "busy / online: hold your messages, or get them",
    "logout",
  ];

  // The credentials of the session the page keeps up, or null.
  let creds = null;
  let me = null;
  let ws = null;
  let loggedIn = false;
  let busy = false;
  let backoff = 0;          // consecutive failed connections
  let retryTimer = null;
  let panelRefreshes = 0;   // whoelse sent by the panel, not typed
  const seen = new Set();   // message ids already shown

  function setState(state, text) {
    ui.state.dataset.state = state;
    ui.state.textContent = text;
    document.body.dataset.state = state;
  }

  function setBusy(on) {
    busy = on;
    document.body.dataset.busy = String(on);
    ui.busy.setAttribute("aria-pressed", String(on));
    ui.busy.textContent = on ? "busy" : "available";
    ui.busy.title = on ? "messages are held for you: click to get them" : "click to hold your messages";
  }

  function showLogin(error) {
    loggedIn = false;
    ui.chatView.hidden = true;
    ui.people.hidden = true;
    ui.busy.hidden = true;
    ui.logout.hidden = true;
    ui.loginView.hidden = false;
    ui.me.textContent = "";
    ui.loginError.textContent = error || "";
    ui.password.value = "";
    setBusy(false);
    if (!ws) setState("login", "not connected");
    (ui.username.value ? ui.password : ui.username).focus();
  }

  function showChat() {
    ui.loginView.hidden = true;
    ui.chatView.hidden = false;
    ui.people.hidden = false;
    ui.busy.hidden = false;
    ui.logout.hidden = false;
    ui.me.textContent = me;
    ui.line.focus();
  }

  function scrolledDown() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }

  function append(li) {
    const stick = scrolledDown();
    ui.messages.appendChild(li);
    if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function note(text, kind) {
    const li = document.createElement("li");
    li.className = kind || "note";
    li.textContent = text;
    append(li);
  }

  function nameButton(name, cls) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.textContent = name;
    b.addEventListener("click", () => startMessage(name));
    return b;
  }

  function startMessage(name) {
    ui.line.value = "message " + name + " ";
    ui.line.focus();
    ui.line.setSelectionRange(ui.line.value.length, ui.line.value.length);
  }

  function localTime(ts) {
    const d = new Date(ts);
    if (isNaN(d)) return ts;
    const today = new Date().toDateString() === d.toDateString();
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return today ? time : d.toLocaleDateString() + " " + time;
  }

  // MSG/BCAST <id> <ts> <from> <text>
  function deliver(kind, rest) {
    const m = /^(\d+) (\S+) (\S+) ?([\s\S]*)$/.exec(rest);
    if (!m) return note("unreadable delivery", "error");
    const [, id, ts, from, text] = m;
    if (seen.has(id)) return; // redelivered after a drop: shown already
    seen.add(id);
    const li = document.createElement("li");
    li.dataset.id = id;
    li.dataset.from = from;
    const own = kind === "BCAST" && from === me;
    li.className = kind === "MSG" ? "private" : own ? "broadcast own" : "broadcast";
    const meta = document.createElement("span");
    meta.className = "meta";
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = kind === "MSG" ? "private" : own ? "your broadcast" : "broadcast";
    const when = document.createElement("time");
    when.dateTime = ts;
    when.textContent = localTime(ts);
    meta.append(tag, when);
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    li.append(meta, nameButton(from, "from"), document.createTextNode(": "), body);
    append(li);
  }

  function showOnline(names) {
    ui.online.replaceChildren();
    if (names.length === 0) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "nobody else";
      ui.online.appendChild(li);
    }
    for (const n of names) {
      const li = document.createElement("li");
      li.appendChild(nameButton(n, "person"));
      ui.online.appendChild(li);
    }
  }

  function refreshPanel() {
    if (loggedIn && send("whoelse")) panelRefreshes += 1;
  }

  const ERRORS = {
    "bad-credentials": () => "Wrong user name or password.",
    "already-online": () => "That user is already logged in elsewhere.",
    "blocked": (d) => "Too many failed attempts: this name is blocked here for " + (d || "a few") + " more seconds.",
    "line-too-long": (d) => "That line was too long (at most " + (Number(d) - 1) + " bytes).",
    "bad-encoding": () => "That line held characters the server refuses.",
    "unknown-command": (d) => "Unknown command: " + d + " (type help).",
    "usage": (d) => "Usage: " + d,
    "unknown-user": (d) => "No such user: " + d,
    "queue-full": (d) => d + "'s box is full: message not sent.",
    "rate-limited": (d) => "Slow down: " + (d || "too many commands"),
    "unavailable": (d) => "The server cannot store messages right now" + (d ? " (" + d + ")" : "") + ": nothing was sent.",
  };

  const BYES = {
    logout: "Logged out.",
    timeout: "The server logged you out: no activity for too long.",
    shutdown: "The server is restarting.",
    blocked: null, // the ERR before it said why
    "login-failed": "Too many failed login attempts.",
    "login-timeout": "The login took too long.",
  };

  function onLine(line) {
    const sp = line.indexOf(" ");
    const kind = sp < 0 ? line : line.slice(0, sp);
    const rest = sp < 0 ? "" : line.slice(sp + 1);
    switch (kind) {
      case "HELLO":
        return;
      case "ASK":
        if (!creds) return;
        if (rest === "username") return void send(creds.user);
        if (rest === "password") return void send(creds.password);
        return;
      case "IDLE":
        // The heartbeat: answered silently, which also confirms every
        // delivery shown before it.
        return void send("idle " + rest);
      case "MSG":
      case "BCAST":
        return deliver(kind, rest);
      case "OFFLINE":
        return note(rest === "1" ? "1 message while you were away:" : rest + " messages while you were away:");
      case "WHO": {
        const names = rest ? rest.split(" ") : [];
        showOnline(names);
        if (panelRefreshes > 0) {
          panelRefreshes -= 1;
          return;
        }
        return note(names.length ? "online: " + names.join(", ") : "you are alone");
      }
      case "LAST":
        return note(rest ? "seen in that time: " + rest.split(" ").join(", ") : "nobody in that time");
      case "OK":
        return onOk(rest);
      case "ERR":
        return onErr(rest);
      case "BYE":
        return onBye(rest);
      default:
        return note(line);
    }
  }

  function onOk(rest) {
    const w = rest.split(" ");
    if (w[0] === "login") {
      me = w[1];
      loggedIn = true;
      backoff = 0;
      setBusy(false); // busy ends with the session it was set in
      setState("online", "connected");
      showChat();
      ui.loginError.textContent = "";
      note("logged in as " + me);
      return refreshPanel();
    }
    if (w[0] === "message") {
      return note(w[2] === "delivered" ? "delivered to " + w[1] : w[1] + " is " + w[4] + ": message held");
    }
    if (w[0] === "broadcast") {
      let s = "broadcast: delivered to " + w[1] + ", held for " + w[2];
      if (w[3] === "full") s += "; box full for " + w[4].split(",").join(", ");
      return note(s);
    }
    if (w[0] === "status") {
      setBusy(w[1] === "busy");
      return note(w[1] === "busy" ? "you are now busy: messages are held for you" : "you are now online");
    }
    note("OK " + rest);
  }

  function onErr(rest) {
    const sp = rest.indexOf(" ");
    const code = sp < 0 ? rest : rest.slice(0, sp);
    const detail = sp < 0 ? "" : rest.slice(sp + 1);
    const words = (ERRORS[code] || ((d) => code + " " + d))(detail);
    if (!loggedIn && ["bad-credentials", "already-online", "blocked"].includes(code)) {
      // A login that cannot succeed as typed: ask the person, not retry.
      creds = null;
      return showLogin(words);
    }
    note(words, "error");
  }

  function onBye(reason) {
    const words = BYES[reason];
    if (reason === "shutdown" && creds) {
      // The server comes back: keep the session going.
      if (loggedIn) note(words);
      return;
    }
    creds = null;
    if (loggedIn) note(words || "disconnected");
    showLogin(words === undefined ? "Disconnected: " + reason : words || ui.loginError.textContent);
  }

  function send(line) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(line);
    return true;
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    setState("connecting", loggedIn || backoff > 0 ? "reconnecting…" : "connecting…");
    const sock = new WebSocket(scheme + "//" + location.host + "/ws");
    ws = sock;
    panelRefreshes = 0;
    sock.addEventListener("message", (e) => {
      if (typeof e.data === "string") onLine(e.data);
    });
    sock.addEventListener("close", () => {
      if (ws !== sock) return;
      ws = null;
      if (creds) {
        scheduleReconnect();
      } else if (!loggedIn) {
        setState("login", "not connected");
      } else {
        loggedIn = false;
        setState("login", "not connected");
      }
    });
  }

  // Exponential backoff with jitter, 0.5 s to 30 s, so a restarting
  // server is not stormed by every page at once.
  function scheduleReconnect() {
    const wasIn = loggedIn;
    loggedIn = false;
    const delay = Math.min(30000, 500 * 2 ** Math.min(backoff, 6)) * (0.75 + Math.random() * 0.5);
    backoff += 1;
    if (wasIn) note("connection lost: reconnecting…", "error");
    setState("reconnecting", "reconnecting in " + Math.ceil(delay / 1000) + " s");
    retryTimer = setTimeout(connect, delay);
  }

  ui.loginForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const user = ui.username.value.trim();
    const password = ui.password.value;
    if (!user || !password) return;
    creds = { user, password };
    ui.loginError.textContent = "";
    backoff = 0;
    if (ws && ws.readyState === WebSocket.OPEN) {
      // Still connected after a failed attempt: the server has asked for
      // a user name again.
      send(user);
    } else if (!ws) {
      connect();
    }
  });

  ui.commandForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const line = ui.line.value;
    const word = line.trim().toLowerCase();
    if (!word) return;
    let out = line;
    if (word === "help") {
      HELP.forEach((h) => note(h));
      ui.line.value = "";
      return;
    }
    if (word === "busy") out = "idle busy";
    if (word === "online") out = "idle online";
    if (!send(out)) return note("not connected: wait for the reconnection", "error");
    if (word === "logout") creds = null;
    ui.line.value = "";
  });

  ui.busy.addEventListener("click", () => send(busy ? "idle online" : "idle busy"));
  ui.logout.addEventListener("click", () => {
    creds = null;
    if (!send("logout")) showLogin();
  });
  ui.refresh.addEventListener("click", refreshPanel);

  showLogin();
})();
