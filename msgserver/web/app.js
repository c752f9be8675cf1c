// The chat page: the client protocol over a WebSocket to the server that
// served the page, one JSON object per message (docs/protocol.md). No
// framework and no build step: this file is served as it is.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const el = {
    conn: $("conn"), login: $("login"), name: $("name"), tokenRow: $("token-row"), token: $("token"),
    loginButton: $("login-button"), loginError: $("login-error"), chat: $("chat"), me: $("me"),
    server: $("server"), logout: $("logout"), log: $("log"), send: $("send"), to: $("to"),
    peersList: $("peers"), text: $("text"), sendButton: $("send-button"),
  };
  const store = window.sessionStorage;
  const KEY_NAME = "chatrelay.name", KEY_TOKEN = "chatrelay.token", KEY_TO = "chatrelay.to";

  const wsURL = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  let ws = null;
  let info = { auth: false, server: "" };
  let me = "";             // logged-in name, "" when not logged in
  let autoLogin = !!store.getItem(KEY_NAME); // log in by itself when the socket opens
  let attempt = 0;         // reconnect attempts since the last login
  let retryTimer = 0, pingTimer = 0, countdownTimer = 0;
  let refSeq = 0;
  const pending = new Map(); // ref -> the status element of a message sent and not answered
  const peers = new Set();
  // The page logs in with acks and receipts (docs/protocol.md, "Delivery
  // guarantees"): it acks each message and receipt once it has shown it,
  // so one that reached the server but not the page comes again at the
  // next login; a message sent again is shown once. A receipt says the
  // other side's client has the message.
  const seen = new Set();     // ids of messages shown, the last SEEN_MAX
  const SEEN_MAX = 5000;
  let toAck = [];             // ids shown and not yet acked
  const receivedEarly = new Set(); // receipts that came before the reply that names the id

  function setConn(state, text) {
    el.conn.dataset.state = state;
    el.conn.textContent = text;
  }

  function showLogin(error) {
    me = "";
    el.chat.hidden = true;
    el.login.hidden = false;
    el.loginError.textContent = error || "";
    el.loginButton.disabled = !isOpen();
    if (!el.name.value) el.name.value = store.getItem(KEY_NAME) || "";
    if (document.activeElement === document.body || !document.activeElement) el.name.focus();
  }

  function showChat() {
    el.login.hidden = true;
    el.chat.hidden = false;
    el.me.textContent = me;
    el.server.textContent = info.server || "this server";
    if (!el.to.value) el.to.value = store.getItem(KEY_TO) || "";
    updateSendable();
    (el.to.value ? el.text : el.to).focus();
  }

  function isOpen() { return ws !== null && ws.readyState === WebSocket.OPEN; }

  function updateSendable() { el.sendButton.disabled = !(isOpen() && me); }

  function send(obj) {
    if (!isOpen()) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  function scrollDown() { el.log.scrollTop = el.log.scrollHeight; }

  function time(ts) {
    const d = ts ? new Date(ts) : new Date();
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function note(text) {
    const li = document.createElement("li");
    li.className = "msg note";
    li.textContent = text;
    el.log.append(li);
    scrollDown();
  }

  function addPeer(name) {
    if (!name || name === me || peers.has(name)) return;
    peers.add(name);
    const o = document.createElement("option");
    o.value = name;
    el.peersList.append(o);
  }

  // ack acks an id with the next batch (one ack per turn of the event
  // loop, at most 256 ids each: the server's limit).
  function ack(id) {
    if (!id) return;
    if (toAck.length === 0) setTimeout(flushAcks, 0);
    toAck.push(id);
  }

  function flushAcks() {
    while (toAck.length > 0 && send({ cmd: "ack", ids: toAck.slice(0, 256) })) toAck = toAck.slice(256);
    toAck = []; // unsent ones come again at the next login, and are then shown once
  }

  function remember(id) {
    seen.add(id);
    if (seen.size > SEEN_MAX) seen.delete(seen.values().next().value);
  }

  // received marks a message sent as on the other page.
  function received(id) {
    const li = el.log.querySelector(`li.msg.out[data-id="${CSS.escape(id)}"]`);
    if (!li) {
      // Its reply is still on the way, or it was sent from an earlier page.
      receivedEarly.add(id);
      if (receivedEarly.size > SEEN_MAX) receivedEarly.delete(receivedEarly.values().next().value);
      return;
    }
    setStatus(li.querySelector(".status"), "received", "received");
  }

  function incoming(ev) {
    if (ev.id && seen.has(ev.id)) {
      ack(ev.id); // shown already: a copy sent again because the last ack did not arrive
      return;
    }
    if (ev.id) remember(ev.id);
    const li = document.createElement("li");
    li.className = "msg in";
    li.dataset.id = ev.id || "";
    if (ev.offline) li.dataset.offline = "true";
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = ev.from + " · " + time(ev.ts) + (ev.offline ? " · while you were away" : "");
    const body = document.createElement("span");
    body.className = "body";
    body.textContent = ev.content;
    li.append(meta, body);
    el.log.append(li);
    addPeer(ev.from);
    if (!el.to.value) el.to.value = ev.from;
    scrollDown();
    ack(ev.id);
  }

  function outgoing(to, content, ref) {
    const li = document.createElement("li");
    li.className = "msg out";
    li.dataset.ref = ref;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = "to " + to + " · " + time() + " · ";
    const status = document.createElement("span");
    status.className = "status";
    setStatus(status, "sent", "sent");
    meta.append(status);
    const body = document.createElement("span");
    body.className = "body";
    body.textContent = content;
    li.append(meta, body);
    el.log.append(li);
    scrollDown();
    return status;
  }

  function setStatus(node, s, text) {
    node.dataset.s = s;
    node.textContent = text;
    node.closest(".msg") && (node.closest(".msg").dataset.status = s);
  }

  const statusText = { delivered: "delivered", relayed: "relayed", offline: "stored offline" };

  function onReply(r) {
    switch (r.reply) {
      case "login":
        if (r.ok) {
          me = r.name;
          attempt = 0;
          store.setItem(KEY_NAME, r.name);
          if (el.token.value) store.setItem(KEY_TOKEN, el.token.value);
          setConn("online", "connected to " + (r.server || info.server));
          showChat();
          startPing();
        } else {
          autoLogin = false;
          store.removeItem(KEY_NAME);
          store.removeItem(KEY_TOKEN);
          showLogin(r.error || "login refused");
        }
        return;
      case "logout":
        showLogin("");
        return;
      case "chat": {
        const node = r.ref ? pending.get(r.ref) : null;
        if (!node) return; // not ours to show (sent before a reload, say)
        pending.delete(r.ref);
        if (r.ok) {
          setStatus(node, r.status || "sent", statusText[r.status] || r.status || "accepted");
          if (r.id) node.closest(".msg").dataset.id = r.id;
          if (r.id && receivedEarly.delete(r.id)) received(r.id);
        } else {
          setStatus(node, "refused", "refused: " + (r.error || r.code));
        }
        return;
      }
      default:
        if (!r.ok && r.error) note("server: " + r.error);
    }
  }

  function onEvent(ev) {
    switch (ev.event) {
      case "chat":
        incoming(ev);
        return;
      case "receipt": // kept for the page like a message until acked
        if (ev.id && ev.status === "delivered") received(ev.id);
        ack(ev.id);
        return;
      case "kicked":
        autoLogin = false; // do not take the name back from the other login
        note("Logged out: " + (ev.reason || "logged in elsewhere"));
        showLogin("You logged in elsewhere. Log in again to take this page back.");
        return;
      case "closing":
        note("Server: " + (ev.reason || ev.code));
        return;
      default:
        // Events this page does not know (a newer server's) are ignored.
    }
  }

  function startPing() {
    clearInterval(pingTimer);
    // The server closes a session silent for its idle timeout (2 minutes by default).
    pingTimer = setInterval(() => send({ cmd: "ping" }), 30000);
  }

  function login(name, token) {
    const req = { cmd: "login", name: name, acks: true, receipts: true };
    if (token) req.token = token;
    return send(req);
  }

  async function loadInfo() {
    try {
      const res = await fetch("info", { cache: "no-store" });
      if (res.ok) info = await res.json();
    } catch (e) {
      // The server may be restarting: the socket's reconnects say so on screen.
    }
    el.tokenRow.hidden = !info.auth;
    el.token.required = !!info.auth;
  }

  function connect() {
    clearTimeout(retryTimer);
    clearInterval(countdownTimer);
    setConn(attempt ? "reconnecting" : "connecting", attempt ? "reconnecting… (attempt " + attempt + ")" : "connecting…");
    const sock = new WebSocket(wsURL);
    ws = sock;
    sock.onopen = async () => {
      if (sock !== ws) return;
      await loadInfo();
      setConn("online", "connected to " + (info.server || location.host));
      const name = store.getItem(KEY_NAME);
      if (autoLogin && name) {
        el.name.value = name;
        login(name, store.getItem(KEY_TOKEN) || "");
      } else {
        showLogin(el.loginError.textContent);
      }
      updateSendable();
    };
    sock.onmessage = (m) => {
      if (sock !== ws || typeof m.data !== "string") return;
      let obj;
      try { obj = JSON.parse(m.data); } catch (e) { return; }
      if (obj === null || typeof obj !== "object") return;
      if (typeof obj.reply === "string") onReply(obj);
      else if (typeof obj.event === "string") onEvent(obj);
    };
    sock.onclose = (e) => {
      if (sock !== ws || leaving) return;
      clearInterval(pingTimer);
      const wasIn = me !== "";
      if (wasIn) autoLogin = true; // log back in after the reconnect
      me = "";
      updateSendable();
      el.loginButton.disabled = true;
      for (const node of pending.values()) setStatus(node, "unknown", "unknown: connection lost before the server answered");
      pending.clear();
      scheduleReconnect(e);
    };
  }

  function scheduleReconnect(e) {
    attempt++;
    // Exponential backoff with jitter: 0.5 s, 1 s, 2 s ... up to 15 s.
    const base = Math.min(15000, 500 * Math.pow(2, Math.min(attempt - 1, 5)));
    const delay = Math.round(base * (0.5 + Math.random() / 2));
    const why = e && e.reason ? " (" + e.reason + ")" : "";
    let left = Math.ceil(delay / 1000);
    const say = () => setConn("reconnecting", "disconnected" + why + "; reconnecting in " + left + " s (attempt " + attempt + ")");
    say();
    countdownTimer = setInterval(() => { if (left > 1) { left--; say(); } }, 1000);
    retryTimer = setTimeout(connect, delay);
  }

  el.login.addEventListener("submit", (e) => {
    e.preventDefault();
    const name = el.name.value.trim();
    if (!name) return;
    el.loginError.textContent = "";
    autoLogin = true;
    store.setItem(KEY_NAME, name);
    if (el.token.value) store.setItem(KEY_TOKEN, el.token.value); else store.removeItem(KEY_TOKEN);
    if (!login(name, el.token.value)) el.loginError.textContent = "Not connected yet; it logs in once connected.";
  });

  el.send.addEventListener("submit", (e) => {
    e.preventDefault();
    const to = el.to.value.trim(), content = el.text.value;
    if (!to || !content || !me) return;
    const ref = "r" + (++refSeq);
    if (!send({ cmd: "chat", send: me, recv: to, content: content, ref: ref })) return;
    pending.set(ref, outgoing(to, content, ref));
    addPeer(to);
    store.setItem(KEY_TO, to);
    el.text.value = "";
    el.text.focus();
  });

  el.logout.addEventListener("click", () => {
    autoLogin = false;
    store.removeItem(KEY_NAME);
    store.removeItem(KEY_TOKEN);
    send({ cmd: "logout" });
  });

  // A page left (or kept in the back/forward cache) lets its session go,
  // so that messages for the user are stored for the next login, and
  // connects again if it is shown again.
  let leaving = false;
  window.addEventListener("pagehide", () => {
    leaving = true;
    clearTimeout(retryTimer);
    clearInterval(pingTimer);
    clearInterval(countdownTimer);
    if (ws) ws.close(1000, "page closed");
  });
  window.addEventListener("pageshow", (e) => {
    if (!e.persisted) return;
    leaving = false;
    attempt = 0;
    autoLogin = !!store.getItem(KEY_NAME);
    connect();
  });

  loadInfo();
  connect();
})();
