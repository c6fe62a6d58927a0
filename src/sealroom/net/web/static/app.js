// Sealroom's web client: the line protocol (docs/protocol.md) over a WebSocket at /ws.
//
// One text message is one line, each way. Every request gets exactly one final reply (OK or
// ERR), in request order, so requests wait in a queue for theirs; data lines (HIST, INFO,
// ROOM) belong to the request at the head of the queue, events (MSG, DM, JOIN, ...) to no
// request. Everything a server or another user sends is shown with textContent: text, never
// HTML. The password and the resume token live in this closure only, or in sessionStorage
// when "Stay signed in on this tab" is ticked; nothing goes into a URL or a cookie.
"use strict";

(() => {
  const MAX_LINES = 500; // kept per conversation
  const HISTORY = 50; // lines asked for on entering a conversation
  const BACKOFF_MAX_S = 30;
  const STORE_KEY = "sealroom.resume";
  // BYE reasons after which reconnecting would only repeat the refusal.
  const FINAL_BYE = ["quit", "kicked", "account-removed", "account-disabled", "account-changed"];

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("status"),
    logout: $("logout"),
    loginView: $("login-view"),
    loginForm: $("login-form"),
    name: $("login-name"),
    password: $("login-password"),
    stay: $("login-stay"),
    loginError: $("login-error"),
    chat: $("chat-view"),
    roomList: $("room-list"),
    dmList: $("dm-list"),
    allRooms: $("all-rooms"),
    refresh: $("refresh-rooms"),
    joinForm: $("join-form"),
    joinRoom: $("join-room"),
    title: $("conversation-title"),
    topic: $("conversation-topic"),
    leave: $("leave"),
    messages: $("messages"),
    messageForm: $("message-form"),
    message: $("message"),
    who: $("who-list"),
  };

  const state = {
    ws: null,
    name: "",
    password: null, // only until a resume token replaces it, and only in memory
    token: null,
    stay: false,
    online: false, // logged in on the current socket
    wanted: false, // the user wants to be connected: reconnect after a drop
    bye: null,
    pending: [], // requests waiting for their final reply
    views: new Map(), // "#room" or "name" -> conversation
    current: null,
    attempts: 0,
    timer: null,
  };

  // -- the wire -----------------------------------------------------------------------------

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  function connect() {
    clearTimeout(state.timer);
    state.bye = null;
    state.pending = [];
    setStatus("Connecting…");
    const ws = new WebSocket(socketUrl());
    state.ws = ws;
    ws.addEventListener("message", (event) => {
      if (ws === state.ws && typeof event.data === "string") onLine(event.data);
    });
    ws.addEventListener("close", () => {
      if (ws === state.ws) onClosed();
    });
  }

  function send(line) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(line);
  }

  // Send a request; ``done(ok, reply, data)`` gets its final reply (the words after OK or
  // ERR) and the data lines that came with it.
  function request(line, done, collects = []) {
    state.pending.push({ done, collects, data: [] });
    send(line);
  }

  // "A B rest of it" with n = 3 -> ["A", "B", "rest of it"]
  function fields(text, n) {
    const out = [];
    let rest = text;
    while (out.length < n - 1) {
      const space = rest.indexOf(" ");
      if (space < 0) break;
      out.push(rest.slice(0, space));
      rest = rest.slice(space + 1);
    }
    out.push(rest);
    return out;
  }

  function onLine(line) {
    const [word, rest = ""] = fields(line, 2);
    const head = state.pending[0];
    if (head && head.collects.includes(word)) {
      head.data.push(rest);
      return;
    }
    switch (word) {
      case "HELLO": return onHello();
      case "OK":
      case "ERR": {
        const request = state.pending.shift();
        if (request && request.done) request.done(word === "OK", rest, request.data);
        return;
      }
      case "BYE": state.bye = rest; return;
      case "MSG": {
        const [room, from, text] = fields(rest, 3);
        return addLine(room, { from, text });
      }
      case "DM": {
        const [from, text] = fields(rest, 2);
        return addLine(from, { from, text }, "dm");
      }
      case "HIST": return onStored(rest);
      case "JOIN": {
        const [room, name] = fields(rest, 2);
        note(room, `${name} joined`);
        return whoChanged(room, name, true);
      }
      case "PART": {
        const [room, name] = fields(rest, 2);
        note(room, `${name} left`);
        return whoChanged(room, name, false);
      }
      case "TOPIC": {
        const [room, from, text] = fields(rest, 3);
        setTopic(room, text);
        return note(room, `${from} set the topic: ${text}`);
      }
      case "WALL": {
        const [from, text] = fields(rest, 2);
        return note(state.current, `announcement from ${from}: ${text}`);
      }
      case "BANNED":
      case "DESTROYED": {
        const [room, from] = fields(rest, 3);
        const what = word === "BANNED" ? "banned you from" : "destroyed";
        note(room, `${from} ${what} ${room}`);
        return forgetRoom(room);
      }
      default: // INFO, MODE, INVITE and lines this client does not know yet
        return note(state.current, line);
    }
  }

  // A HIST line outside a /history reply: a private message stored while we were away.
  function onStored(rest) {
    const [target, id, time, from, text] = fields(rest, 5);
    const other = from === state.name ? target : from;
    addLine(other, { id, time, from, text }, "dm");
  }

  function onHello() {
    if (state.token) {
      request(`/resume ${state.name} ${state.token}`, (ok, reply) => {
        if (ok) return loggedIn();
        state.token = null;
        forgetStored();
        if (state.password) return onHello();
        signedOut(`Please log in again (${explain(reply)}).`);
      });
    } else if (state.password) {
      request(`/login ${state.name} ${state.password}`, (ok, reply) => {
        if (ok) return loggedIn();
        signedOut(explain(reply));
      });
    } else {
      signedOut("");
    }
  }

  function onClosed() {
    const wasOnline = state.online;
    state.online = false;
    state.ws = null;
    state.pending = [];
    const reason = (state.bye || "").split(" ")[0];
    if (!state.wanted || FINAL_BYE.includes(reason)) {
      if (state.wanted) signedOut(`Disconnected: ${state.bye}`);
      return;
    }
    if (!wasOnline && !state.token && !state.password) return;
    const delay = Math.min(BACKOFF_MAX_S, 2 ** state.attempts) * (0.5 + Math.random() / 2);
    state.attempts += 1;
    setStatus(`Connection lost${state.bye ? ` (${state.bye})` : ""}; reconnecting in `
      + `${Math.ceil(delay)} s…`);
    state.timer = setTimeout(connect, delay * 1000);
  }

  function explain(reply) {
    const [code, text] = fields(reply, 2);
    return text ? `${text} (${code})` : code;
  }

  // -- logging in and out -------------------------------------------------------------------

  function loggedIn() {
    state.online = true;
    state.attempts = 0;
    ui.loginView.hidden = true;
    ui.chat.hidden = false;
    ui.logout.hidden = false;
    ui.loginError.textContent = "";
    setStatus(`Connected as ${state.name}`);
    request("/token", (ok, reply) => {
      if (!ok) return;
      state.token = fields(reply, 3)[1];
      state.password = null; // the token is enough to come back
      if (state.stay) {
        sessionStorage.setItem(STORE_KEY, JSON.stringify({ name: state.name, token: state.token }));
      }
    });
    const wanted = [...state.views.values()].filter((v) => v.kind === "room").map((v) => v.key);
    request("/rooms", (ok, reply) => {
      const inRooms = ok ? reply.split(" ").slice(1).filter(Boolean) : [];
      for (const room of inRooms) view(room, "room").joined = true;
      for (const room of wanted) {
        if (!inRooms.includes(room)) join(room, false);
      }
      const first = state.current || inRooms[0] || wanted[0];
      if (first) open(first);
    });
    listRooms();
    if (document.activeElement === ui.password || document.activeElement === document.body) {
      ui.message.focus();
    }
  }

  function signedOut(message) {
    state.wanted = false;
    state.online = false;
    clearTimeout(state.timer);
    if (state.ws) state.ws.close();
    state.ws = null;
    ui.chat.hidden = true;
    ui.logout.hidden = true;
    ui.loginView.hidden = false;
    ui.loginError.textContent = message;
    setStatus("Not connected");
  }

  function logIn(event) {
    event.preventDefault();
    const name = ui.name.value.trim().toLowerCase();
    const password = ui.password.value;
    if (!name || !password) {
      ui.loginError.textContent = "Enter your name and password.";
      return;
    }
    if (state.name !== name) resetViews();
    state.name = name;
    state.password = password;
    state.token = null;
    state.stay = ui.stay.checked;
    ui.password.value = "";
    if (!state.stay) forgetStored();
    state.wanted = true;
    state.attempts = 0;
    connect();
  }

  function logOut() {
    forgetStored();
    state.token = null;
    state.password = null;
    if (state.online) send("/quit");
    signedOut("");
    resetViews();
  }

  function forgetStored() {
    sessionStorage.removeItem(STORE_KEY);
  }

  function resumeFromTab() {
    let saved = null;
    try {
      saved = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
    } catch (error) {
      saved = null;
    }
    if (!saved || typeof saved.name !== "string" || typeof saved.token !== "string") return;
    state.name = saved.name;
    state.token = saved.token;
    state.stay = true;
    state.wanted = true;
    ui.name.value = saved.name;
    ui.stay.checked = true;
    connect();
  }

  // -- conversations ------------------------------------------------------------------------

  function view(key, kind) {
    let conversation = state.views.get(key);
    if (!conversation) {
      conversation = { key, kind, lines: [], unread: 0, topic: "", joined: false, who: null };
      state.views.set(key, conversation);
      renderLists();
    }
    return conversation;
  }

  function resetViews() {
    state.views.clear();
    state.current = null;
    ui.messages.replaceChildren();
    ui.who.replaceChildren();
    renderLists();
  }

  function addLine(key, line, kind = "room") {
    if (!key) return;
    const conversation = view(key, key.startsWith("#") ? "room" : kind);
    if (line.id && conversation.lines.some((known) => known.id === line.id)) return;
    conversation.lines.push(line);
    if (conversation.lines.length > MAX_LINES) conversation.lines.shift();
    if (key === state.current) {
      ui.messages.append(render(line));
      scrollDown();
    } else if (!line.note) {
      conversation.unread += 1;
      renderLists();
    }
  }

  function note(key, text, failed = false) {
    const where = key || state.current;
    if (where) addLine(where, { note: true, text, failed });
    else setStatus(text); // no conversation to show it in yet
  }

  function render(line) {
    const item = document.createElement("li");
    if (line.note) {
      item.className = line.failed ? "note failed" : "note";
      item.textContent = line.text;
    } else {
      const from = document.createElement("span");
      from.className = "from";
      from.textContent = line.from;
      item.append(from, `: ${line.text}`);
      if (line.time) item.title = line.time;
    }
    return item;
  }

  function scrollDown() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function open(key) {
    const conversation = view(key, key.startsWith("#") ? "room" : "dm");
    state.current = key;
    conversation.unread = 0;
    ui.title.textContent = conversation.kind === "room" ? key : `Private: ${key}`;
    setTopic(key, conversation.topic);
    ui.leave.hidden = conversation.kind !== "room";
    ui.messages.replaceChildren(...conversation.lines.map(render));
    scrollDown();
    renderLists();
    renderWho(conversation);
    if (!state.online) return;
    loadHistory(conversation);
    if (conversation.kind === "room") {
      request(`/who ${key}`, (ok, reply) => {
        if (!ok) return;
        conversation.who = reply.split(" ").slice(2).filter(Boolean);
        if (state.current === key) renderWho(conversation);
      });
    }
  }

  // The stored past replaces what we had; lines that arrived meanwhile and are not in it
  // (a message can reach us before the history writer has stored it) stay after it.
  function loadHistory(conversation) {
    const mark = conversation.lines.length;
    request(`/history ${conversation.key} ${HISTORY}`, (ok, reply, data) => {
      if (!ok) return;
      const past = data.map((rest) => {
        const [, id, time, from, text] = fields(rest, 5);
        return { id, time, from, text };
      });
      const later = conversation.lines.slice(mark).filter((line) => line.note
        || !past.some((old) => old.from === line.from && old.text === line.text));
      conversation.lines = [...past, ...later].slice(-MAX_LINES);
      if (state.current === conversation.key) {
        ui.messages.replaceChildren(...conversation.lines.map(render));
        scrollDown();
      }
    }, ["HIST"]);
  }

  function setTopic(key, text) {
    const conversation = state.views.get(key);
    if (conversation) conversation.topic = text || "";
    if (key === state.current) ui.topic.textContent = text || "";
  }

  function whoChanged(room, name, present) {
    const conversation = state.views.get(room);
    if (!conversation || !conversation.who) return;
    const others = conversation.who.filter((known) => known !== name);
    conversation.who = present ? [...others, name].sort() : others;
    if (state.current === room) renderWho(conversation);
  }

  function renderWho(conversation) {
    const names = conversation.kind === "room" ? conversation.who || [] : [state.name, conversation.key];
    ui.who.replaceChildren(...names.map((name) => {
      const item = document.createElement("li");
      if (name === state.name) {
        item.textContent = `${name} (you)`;
      } else {
        const button = linkButton(name, () => open(name));
        button.setAttribute("aria-label", `Private message to ${name}`);
        item.append(button);
      }
      return item;
    }));
  }

  function linkButton(text, action) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.textContent = text;
    button.addEventListener("click", action);
    return button;
  }

  function renderLists() {
    const entries = (kind) => [...state.views.values()]
      .filter((conversation) => conversation.kind === kind)
      .sort((a, b) => a.key.localeCompare(b.key))
      .map((conversation) => {
        const item = document.createElement("li");
        const button = linkButton(conversation.key, () => open(conversation.key));
        if (conversation.key === state.current) button.setAttribute("aria-current", "true");
        item.append(button);
        if (conversation.unread) {
          const count = document.createElement("span");
          count.className = "unread";
          count.textContent = ` (${conversation.unread} new)`;
          item.append(count);
        }
        return item;
      });
    ui.roomList.replaceChildren(...entries("room"));
    ui.dmList.replaceChildren(...entries("dm"));
  }

  // /list: the rooms one may join. A server without it answers ERR bad-command.
  function listRooms() {
    request("/list", (ok, reply, data) => {
      if (!ok) {
        const item = document.createElement("li");
        item.className = "meta";
        item.textContent = "This server does not list its rooms; join one by name.";
        ui.allRooms.replaceChildren(item);
        return;
      }
      ui.allRooms.replaceChildren(...data.map((rest) => {
        const [room, members, mode, topic] = fields(rest, 4);
        const item = document.createElement("li");
        const button = linkButton(room, () => join(room, true));
        button.setAttribute("aria-label", `Join ${room}`);
        const meta = document.createElement("span");
        meta.className = "meta";
        meta.textContent = `${members} here${mode === "private" ? ", private" : ""}`
          + `${topic ? ` – ${topic}` : ""}`;
        item.append(button, meta);
        return item;
      }));
    }, ["ROOM"]);
  }

  function join(room, show) {
    request(`/join ${room}`, (ok, reply) => {
      if (!ok) {
        note(state.current, `Cannot join ${room}: ${explain(reply)}`, true);
        return;
      }
      const [, joined, topic = ""] = fields(reply, 3);
      const conversation = view(joined, "room");
      conversation.joined = true;
      setTopic(joined, topic);
      if (show || !state.current) open(joined);
    });
  }

  function forgetRoom(room) {
    state.views.delete(room);
    if (state.current === room) {
      const next = [...state.views.keys()][0];
      if (next) open(next);
      else {
        state.current = null;
        ui.messages.replaceChildren();
        ui.title.textContent = "…";
      }
    }
    renderLists();
  }

  function leave() {
    const room = state.current;
    if (!room || !room.startsWith("#")) return;
    request(`/part ${room}`, (ok, reply) => {
      if (ok) forgetRoom(room);
      else note(room, `Cannot leave ${room}: ${explain(reply)}`, true);
    });
  }

  // -- the message field --------------------------------------------------------------------

  function submitMessage(event) {
    event.preventDefault();
    const text = ui.message.value;
    if (!text.trim()) return;
    if (!state.online) {
      note(state.current, "Not connected; your message was not sent.", true);
      return;
    }
    ui.message.value = "";
    if (text.startsWith("/") && !text.startsWith("//")) {
      command(text);
    } else {
      say(state.current, text.startsWith("//") ? text.slice(1) : text);
    }
  }

  // To a room or a person; with no conversation open yet, to the server's current room
  // (the default room right after login), which the reply names.
  function say(key, text) {
    let line = `/say ${key} ${text}`;
    if (!key) line = text.startsWith("/") ? `/${text}` : text;
    else if (!key.startsWith("#")) line = `/msg ${key} ${text}`;
    request(line, (ok, reply) => {
      const where = key || (ok ? fields(reply, 3)[1] : null);
      if (ok) addLine(where, { from: state.name, text });
      else note(where, `Not sent: ${explain(reply)}`, true);
    });
  }

  // A command typed in the field: sent as it is, as on the TLS port. The ones that change
  // what this page shows are followed; the others' replies are shown as notes.
  function command(text) {
    const [verb, rest = ""] = fields(text.slice(1), 2);
    const target = rest.split(" ")[0];
    switch (verb.toLowerCase()) {
      case "join":
        if (target) return join(target.toLowerCase(), true);
        break;
      case "part":
        if (!target || target === state.current) return leave();
        break;
      case "msg": {
        const [name, message] = fields(rest, 2);
        if (name && message) {
          open(name.toLowerCase());
          return say(name.toLowerCase(), message);
        }
        break;
      }
      case "quit":
        return logOut();
      default:
        break;
    }
    request(text, (ok, reply, data) => {
      for (const line of data) note(state.current, line);
      note(state.current, `${ok ? "OK" : "ERR"} ${reply}`, !ok);
    }, ["HIST", "INFO", "ROOM"]);
  }

  function setStatus(text) {
    ui.status.textContent = text;
  }

  // -- wiring -------------------------------------------------------------------------------

  ui.loginForm.addEventListener("submit", logIn);
  ui.messageForm.addEventListener("submit", submitMessage);
  ui.joinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    let room = ui.joinRoom.value.trim().toLowerCase();
    if (!room) return;
    if (!room.startsWith("#")) room = `#${room}`;
    ui.joinRoom.value = "";
    join(room, true);
  });
  ui.leave.addEventListener("click", leave);
  ui.logout.addEventListener("click", logOut);
  ui.refresh.addEventListener("click", listRooms);
  resumeFromTab();
})();
