// The gateway console (docs/console.md): plain ES2020, no build step, no third-party code.
//
// Everything a server sends (payloads, message ids, topic and user names, error texts) is
// put on the page with textContent or as an attribute value, never parsed as HTML: a
// payload is whatever any publisher chose to send.
"use strict";

(() => {
  const TOKEN_KEY = "gateway-console";
  const POLL_MS = 3000; // topic list refresh, only while the page is visible
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_CAP_MS = 10000;
  const MAX_LOG = 1000;
  const MAX_NOTICES = 100;

  const $ = (id) => document.querySelector(`[data-testid="${id}"]`);

  const state = {
    token: null,
    user: null, // {username, role, ...} from login or register
    ws: null,
    connection: "disconnected",
    attempts: 0,
    retryTimer: null,
    retryAt: 0,
    countdown: null,
    opened: false,
    subs: new Map(), // topic -> {lastN, epoch, lastSeq, status, fresh}
    pending: new Map(), // request_id -> {kind, topic, resume}
    nextId: 1,
    pollTimer: null,
    originAllowed: true,
    membersTopic: null,
    renderQueued: false,
    logQueue: [], // event log entries waiting for the next frame
    logQueued: false,
  };

  // ---------------------------------------------------------------------------------------
  // DOM helpers: text only

  /** Create an element; string children become text nodes, attributes are set as values. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function show(node, text) {
    node.textContent = text || "";
    node.hidden = !text;
  }

  function setResult(node, text, failed) {
    node.textContent = text;
    node.classList.toggle("failed", Boolean(failed));
  }

  function clock(date) {
    const d = date instanceof Date ? date : new Date(date);
    if (Number.isNaN(d.getTime())) return String(date);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function keepScrolled(list, append) {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    append();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  // ---------------------------------------------------------------------------------------
  // Notices: connection changes, gaps, refusals

  function notice(kind, text, topic) {
    const list = $("notices");
    const item = el("li", { "data-kind": kind, "data-topic": topic }, el("time", {}, clock(new Date())), text);
    keepScrolled(list, () => list.append(item));
    while (list.children.length > MAX_NOTICES) list.firstElementChild.remove();
  }

  /** A notice that also marks the place in the event log where something was lost or ended. */
  function gapNotice(kind, text, topic) {
    notice(kind, text, topic);
    queueLogItem(el("li", { class: "marker", "data-notice": kind, "data-topic": topic }, text));
  }

  /**
   * Add an entry to the event log at the next frame, in arrival order: a burst of events
   * costs one layout, not one each. A hidden tab draws nothing, so what waits is capped to
   * what the log keeps anyway.
   */
  function queueLogItem(item) {
    state.logQueue.push(item);
    if (state.logQueue.length > MAX_LOG) state.logQueue.splice(0, state.logQueue.length - MAX_LOG);
    if (state.logQueued) return;
    state.logQueued = true;
    requestAnimationFrame(() => {
      state.logQueued = false;
      const log = $("event-log");
      const items = state.logQueue.splice(0);
      keepScrolled(log, () => log.append(...items));
      const extra = log.children.length - MAX_LOG;
      for (let i = 0; i < extra; i++) log.firstElementChild.remove();
    });
  }

  // ---------------------------------------------------------------------------------------
  // HTTP: same-origin, relative URLs (the page is /console, so "topics" is /topics)

  async function api(method, path, body) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
      });
    } catch (err) {
      return { status: 0, ok: false, data: null, error: "the gateway is unreachable" };
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    const error = (data && typeof data.error === "string" && data.error) || `HTTP ${response.status}`;
    if (response.status === 401 && state.token && path !== "users/login") {
      logout("Your session has expired or was refused: log in again.");
    }
    return { status: response.status, ok: response.ok, data, error };
  }

  const topicPath = (name) => `topics/${encodeURIComponent(name)}`;

  // ---------------------------------------------------------------------------------------
  // Login, register, logout. The token lives in sessionStorage: it survives a reload of this
  // tab, is gone when the tab closes, is never shared with other tabs, and, unlike a cookie,
  // is never sent by the browser on its own (no CSRF). See docs/console.md.

  function saveSession() {
    sessionStorage.setItem(TOKEN_KEY, JSON.stringify({ token: state.token, user: state.user }));
  }

  function restoreSession() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || "null");
      if (saved && typeof saved.token === "string" && saved.user) return saved;
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
    }
    return null;
  }

  async function authenticate(path) {
    const username = $("login-username").value.trim();
    const password = $("login-password").value;
    const email = $("login-email").value.trim();
    show($("login-error"), "");
    if (!username || !password) {
      show($("login-error"), "Username and password are required.");
      return;
    }
    const body = { username, password };
    if (path === "users/register" && email) body.email = email;
    const result = await api("POST", path, body);
    if (!result.ok) {
      show($("login-error"), result.error);
      return;
    }
    $("login-password").value = "";
    login(result.data.token, result.data.user);
  }

  function login(token, user) {
    state.token = token;
    state.user = user;
    saveSession();
    $("whoami-name").textContent = user.role === "admin" ? `${user.username} (admin)` : user.username;
    $("whoami").hidden = false;
    $("login-panel").hidden = true;
    $("workspace").hidden = false;
    connect();
    refreshTopics();
  }

  function logout(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.user = null;
    state.subs.clear();
    state.pending.clear();
    clearTimeout(state.pollTimer);
    disconnect();
    renderSubscriptions();
    // Nothing of this account stays on the page for the next one.
    state.logQueue = [];
    state.membersTopic = null;
    for (const id of ["event-log", "notices", "topic-list", "members-list"]) $(id).replaceChildren();
    for (const id of ["publish-result", "create-result", "members-result"]) setResult($(id), "");
    $("members-panel").hidden = true;
    $("whoami").hidden = true;
    $("workspace").hidden = true;
    $("login-panel").hidden = false;
    show($("login-error"), reason || "");
  }

  // ---------------------------------------------------------------------------------------
  // The WebSocket: connect, reconnect with capped backoff, resume every subscription

  function setConnection(name, detail) {
    state.connection = name;
    const node = $("connection-state");
    node.textContent = name;
    node.dataset.state = name;
    $("connection-detail").textContent = detail || "";
    $("reconnect-now").hidden = name !== "reconnecting";
  }

  function wsUrl() {
    const url = new URL("ws", document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", state.token);
    return url.href;
  }

  function connect() {
    if (!state.token) return;
    clearTimeout(state.retryTimer);
    clearInterval(state.countdown);
    state.retryTimer = null;
    if (!state.originAllowed) {
      // /ws would answer 403 to every try: say so once instead of retrying forever.
      setConnection("disconnected", "this page's origin is not allowed");
      return;
    }
    setConnection(state.attempts === 0 ? "connecting" : "reconnecting", state.attempts ? `attempt ${state.attempts + 1}` : "");
    const ws = new WebSocket(wsUrl());
    state.ws = ws;
    state.opened = false;
    ws.addEventListener("open", () => {
      if (state.ws !== ws) return;
      state.opened = true;
      state.attempts = 0;
      setConnection("connected");
      for (const [topic, sub] of state.subs) sendSubscribe(topic, sub);
    });
    ws.addEventListener("message", (event) => {
      if (state.ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (err) {
        notice("error", "The gateway sent a frame that is not JSON.");
        return;
      }
      if (frame && typeof frame === "object") handleFrame(frame);
    });
    ws.addEventListener("close", (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.pending.clear();
      for (const sub of state.subs.values()) sub.status = sub.epoch === null ? "subscribing" : "resuming";
      renderSubscriptions();
      if (!state.token) return;
      if (!state.opened) checkWhyRefused();
      scheduleReconnect(event.code);
    });
  }

  function disconnect() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdown);
    state.attempts = 0;
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close(1000);
    setConnection("disconnected");
  }

  function scheduleReconnect(code) {
    // A doubling delay, capped, of which a random half: a restarted gateway is not hit by
    // every console at the same instant.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_FIRST_MS * 2 ** state.attempts);
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    state.attempts += 1;
    state.retryAt = Date.now() + delay;
    const why = code === 1001 ? "gateway restarting" : code === 4008 ? "read too slowly" : `closed (${code})`;
    const tick = () => {
      const left = Math.max(0, state.retryAt - Date.now()) / 1000;
      setConnection("reconnecting", `${why}; retry ${state.attempts} in ${left.toFixed(1)} s`);
    };
    tick();
    state.countdown = setInterval(tick, 250);
    state.retryTimer = setTimeout(connect, delay);
  }

  /**
   * A socket that never opened: to the page a refused token (401) looks like a gateway that
   * is away, so ask with a plain request. A 401 there logs out (in api()); anything else
   * (no answer, a 503 while it drains, a connection limit) is retried with the backoff.
   */
  async function checkWhyRefused() {
    if (!state.originAllowed) return; // the banner already says so
    await api("GET", "users/profile");
  }

  function send(frame) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  function requestId(kind, topic, resume) {
    const id = `c${state.nextId++}`;
    state.pending.set(id, { kind, topic, resume });
    return id;
  }

  function sendSubscribe(topic, sub) {
    const resume = sub.epoch !== null;
    const frame = { type: "subscribe", topic, request_id: requestId("subscribe", topic, resume) };
    if (resume) {
      // Resume after the last event shown (docs/protocol.md, reconnecting without losing messages).
      frame.since_seq = sub.lastSeq;
      frame.epoch = sub.epoch;
      sub.status = "resuming";
    } else {
      frame.last_n = sub.lastN;
      sub.status = "subscribing";
    }
    send(frame);
    renderSubscriptions();
  }

  // ---------------------------------------------------------------------------------------
  // Frames from the gateway (docs/protocol.md)

  function handleFrame(frame) {
    const request = frame.request_id ? state.pending.get(frame.request_id) : undefined;
    if (request) state.pending.delete(frame.request_id);
    switch (frame.type) {
      case "event":
        return onEvent(frame);
      case "ack":
        if (request && request.kind === "subscribe") onSubscribed(frame, request);
        return undefined;
      case "error":
        return onError(frame, request);
      case "info":
        return onInfo(frame);
      default:
        return undefined; // pong, and frames of later versions
    }
  }

  function onSubscribed(ack, request) {
    const sub = state.subs.get(ack.topic);
    if (!sub) return; // unsubscribed meanwhile
    if (!request.resume) {
      // The replay of up to last_n events follows, then live ones.
      sub.lastSeq = Math.max(0, ack.seq - sub.lastN);
      sub.fresh = true;
    } else if (ack.recovered === false) {
      const why = ack.epoch !== sub.epoch ? "the topic was recreated or its history lost" : "the history no longer holds them";
      gapNotice("warning", `Resumed ${ack.topic} but not everything was recovered (${why}): events after seq ${sub.lastSeq} may be missing.`, ack.topic);
      // Another epoch, or a stream that went back: the ring is replayed whole.
      if (ack.epoch !== sub.epoch || ack.seq < sub.lastSeq) sub.lastSeq = 0;
      sub.fresh = true;
    } else if (ack.seq > sub.lastSeq) {
      notice("info", `Resumed ${ack.topic}: catching up on ${ack.seq - sub.lastSeq} missed event(s), nothing lost.`, ack.topic);
    }
    sub.epoch = ack.epoch;
    sub.status = "subscribed";
    renderSubscriptions();
  }

  function onEvent(frame) {
    const sub = state.subs.get(frame.topic);
    const message = frame.message;
    if (!sub || !message || typeof message.seq !== "number") return;
    if (sub.lastSeq !== null && message.seq <= sub.lastSeq) return; // seen already
    if (!sub.fresh && sub.lastSeq !== null && message.seq > sub.lastSeq + 1) {
      gapNotice("warning", `Gap in ${frame.topic}: seq ${sub.lastSeq + 1} to ${message.seq - 1} never arrived.`, frame.topic);
    }
    sub.fresh = false;
    sub.lastSeq = message.seq;
    appendEvent(frame.topic, message, sub.epoch);
    renderSubscriptions();
  }

  function appendEvent(topic, message, epoch) {
    let payload;
    try {
      payload = JSON.stringify(message.payload, null, 2);
    } catch (err) {
      payload = String(message.payload);
    }
    const item = el(
      "li",
      { class: "event", "data-seq": message.seq, "data-topic": topic, "data-epoch": epoch },
      el(
        "div",
        { class: "event-head" },
        el("span", { class: "seq" }, `#${message.seq}`),
        el("span", { class: "topic-name" }, topic),
        el("time", { datetime: message.timestamp, title: message.timestamp }, clock(message.timestamp)),
        el("span", { class: "msg-id", title: "message id" }, String(message.id)),
      ),
      el("pre", { class: "payload" }, payload === undefined ? "undefined" : payload),
    );
    queueLogItem(item);
  }

  function onError(frame, request) {
    const err = frame.error || {};
    const text = `${err.code || "ERROR"}: ${err.message || "refused"}`;
    if (request && request.kind === "subscribe") {
      state.subs.delete(request.topic);
      renderSubscriptions();
      if (err.code === "TOPIC_NOT_FOUND" && request.resume) {
        gapNotice("error", `${request.topic} no longer exists (deleted, or the gateway restarted without keeping topics): unsubscribed.`, request.topic);
        return;
      }
      notice("error", `Subscribe to ${request.topic} refused: ${text}`, request.topic);
      return;
    }
    notice("error", text, request && request.topic);
  }

  function onInfo(frame) {
    const topic = frame.topic;
    switch (frame.msg) {
      case "ping":
        return;
      case "dropped":
        gapNotice("warning", `Lost ${frame.count} event(s) of ${topic} (seq ${frame.from_seq} to ${frame.to_seq}): this page read too slowly.`, topic);
        if (state.subs.has(topic)) {
          const sub = state.subs.get(topic);
          sub.lastSeq = Math.max(sub.lastSeq || 0, frame.to_seq); // the gap is told: no second notice
        }
        return;
      case "topic_deleted":
        state.subs.delete(topic);
        renderSubscriptions();
        refreshTopics();
        gapNotice("error", `Topic ${topic} was deleted: unsubscribed.`, topic);
        return;
      case "access_revoked":
        state.subs.delete(topic);
        renderSubscriptions();
        gapNotice("error", `Your access to ${topic} was revoked: unsubscribed.`, topic);
        return;
      case "shutdown":
        notice("warning", "The gateway is shutting down; reconnecting when it is back.");
        return;
      default:
        notice("info", `info: ${String(frame.msg)}`, topic);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Subscribe, unsubscribe

  function subscribe(topic, lastN) {
    if (!topic) return notice("error", "Name a topic to subscribe to.");
    if (state.subs.has(topic)) return notice("info", `Already subscribed to ${topic}.`, topic);
    const sub = { lastN, epoch: null, lastSeq: null, status: "subscribing", fresh: true };
    state.subs.set(topic, sub);
    sendSubscribe(topic, sub); // sent on (re)connect if the socket is not open now
  }

  function unsubscribe(topic) {
    if (!state.subs.delete(topic)) return notice("info", `Not subscribed to ${topic}.`, topic);
    send({ type: "unsubscribe", topic, request_id: requestId("unsubscribe", topic, false) });
    renderSubscriptions();
  }

  /** Redraw the subscription list once per frame, however many events arrive meanwhile. */
  function renderSubscriptions() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => {
      state.renderQueued = false;
      drawSubscriptions();
    });
  }

  function drawSubscriptions() {
    const list = $("subscriptions");
    const items = [];
    for (const [topic, sub] of state.subs) {
      const seq = sub.lastSeq === null ? "" : ` · seq ${sub.lastSeq}`;
      const stop = el("button", { type: "button", class: "small secondary", "data-testid": "subscription-unsubscribe" }, "Unsubscribe");
      stop.addEventListener("click", () => unsubscribe(topic));
      items.push(
        el(
          "li",
          { "data-topic": topic, "data-state": sub.status, "data-last-seq": sub.lastSeq },
          el("span", { class: "topic-name" }, topic),
          el("span", { class: "status" }, sub.status),
          el("span", { class: "muted" }, seq),
          el("span", { class: "topic-actions" }, stop),
        ),
      );
    }
    list.replaceChildren(...items);
  }

  // ---------------------------------------------------------------------------------------
  // Publish over HTTP: it works whatever the WebSocket's state, and answers with the seq.

  function parsePayload() {
    const area = $("publish-payload");
    const text = area.value.trim();
    let error = "";
    let value;
    if (!text) error = "The payload is empty: write JSON (null is allowed).";
    else {
      try {
        value = JSON.parse(text);
      } catch (err) {
        error = `Invalid JSON: ${err.message}`;
      }
    }
    area.setAttribute("aria-invalid", error ? "true" : "false");
    show($("publish-error"), error);
    return error ? { ok: false } : { ok: true, value };
  }

  async function publish() {
    const topic = $("topic-name").value.trim();
    const parsed = parsePayload();
    const result = $("publish-result");
    if (!parsed.ok) return setResult(result, "Not sent: fix the JSON first.", true);
    if (!topic) return setResult(result, "Name the topic to publish to.", true);
    const answer = await api("POST", `${topicPath(topic)}/messages`, { payload: parsed.value });
    if (answer.ok) setResult(result, `Published to ${answer.data.topic}: seq ${answer.data.seq}.`);
    else setResult(result, `Not published: ${answer.error}`, true);
  }

  // ---------------------------------------------------------------------------------------
  // Topics: list (polled while visible), create, delete, members

  function mayManage(topic) {
    return state.user && (state.user.role === "admin" || topic.owner === state.user.username);
  }

  async function refreshTopics() {
    clearTimeout(state.pollTimer);
    if (!state.token) return;
    const result = await api("GET", "topics");
    if (!state.token) return;
    show($("topic-list-error"), result.ok ? "" : `Could not list topics: ${result.error}`);
    if (result.ok) renderTopics(result.data.topics || []);
    schedulePoll();
  }

  function schedulePoll() {
    clearTimeout(state.pollTimer);
    if (state.token && document.visibilityState === "visible") {
      state.pollTimer = setTimeout(refreshTopics, POLL_MS);
    }
  }

  function renderTopics(topics) {
    topics.sort((a, b) => a.name.localeCompare(b.name));
    const items = topics.map((topic) => {
      const actions = el("span", { class: "topic-actions" });
      const button = (label, testid, onClick, extra) => {
        const b = el("button", { type: "button", class: `small ${extra || "secondary"}`, "data-testid": testid }, label);
        b.addEventListener("click", onClick);
        actions.append(b);
      };
      button("Use", "topic-use", () => {
        $("topic-name").value = topic.name;
        $("topic-name").focus();
      });
      button("Members", "topic-members", () => openMembers(topic));
      if (mayManage(topic)) button("Delete", "topic-delete", () => deleteTopic(topic.name), "danger");
      const owner = topic.owner === null ? "no owner" : `owner ${topic.owner}`;
      return el(
        "li",
        { "data-topic": topic.name, "data-subscribers": topic.subscribers },
        el("span", { class: "topic-name" }, topic.name),
        el("span", { class: "count", title: "subscriptions, all connections", "data-testid": "topic-subscribers" }, `${topic.subscribers} subscriber${topic.subscribers === 1 ? "" : "s"}`),
        actions,
        el("span", { class: "topic-meta" }, `${owner} · publish: ${topic.publish} · subscribe: ${topic.subscribe}`),
      );
    });
    $("topic-list").replaceChildren(...items);
    $("topic-list-empty").hidden = items.length > 0;
    $("topics-updated").textContent = `updated ${clock(new Date()).slice(0, 8)}`;
  }

  async function createTopic() {
    const name = $("create-name").value.trim();
    const body = { name, publish: $("create-publish").value, subscribe: $("create-subscribe").value };
    const result = await api("POST", "topics", body);
    if (result.ok) {
      setResult($("create-result"), `Created ${result.data.topic} (publish: ${result.data.publish}, subscribe: ${result.data.subscribe}).`);
      $("create-name").value = "";
      $("topic-name").value = result.data.topic;
      refreshTopics();
    } else {
      setResult($("create-result"), `Not created: ${result.error}`, true);
    }
  }

  async function deleteTopic(name) {
    if (!window.confirm(`Delete topic ${name}? Its subscribers are told and its history is lost.`)) return;
    const result = await api("DELETE", topicPath(name));
    if (!result.ok) notice("error", `Could not delete ${name}: ${result.error}`, name);
    else notice("info", `Deleted ${name}.`, name);
    if (state.membersTopic && state.membersTopic.name === name) $("members-panel").hidden = true;
    refreshTopics();
  }

  async function openMembers(topic) {
    state.membersTopic = topic;
    $("members-topic").textContent = topic.name;
    $("members-panel").hidden = false;
    $("members-form").hidden = !mayManage(topic);
    setResult($("members-result"), "");
    await loadMembers();
  }

  async function loadMembers() {
    const topic = state.membersTopic;
    if (!topic) return;
    const result = await api("GET", `${topicPath(topic.name)}/members`);
    if (state.membersTopic !== topic) return;
    if (!result.ok) {
      $("members-list").replaceChildren();
      setResult($("members-result"), result.error, true);
      return;
    }
    const items = result.data.members.map((member) => {
      const item = el("li", { "data-member": member }, el("span", {}, member));
      if (member === topic.owner) item.append(el("span", { class: "muted" }, "owner"));
      else if (mayManage(topic)) {
        const remove = el("button", { type: "button", class: "small danger", "data-testid": "member-remove" }, "Remove");
        remove.addEventListener("click", () => changeMember("DELETE", member));
        item.append(el("span", { class: "topic-actions" }, remove));
      }
      return item;
    });
    $("members-list").replaceChildren(...items);
  }

  async function changeMember(method, username) {
    const topic = state.membersTopic;
    if (!topic || !username) return;
    const path = `${topicPath(topic.name)}/members/${encodeURIComponent(username)}`;
    const result = await api(method, path);
    if (result.ok) setResult($("members-result"), `${result.data.status === "added" ? "Added" : "Removed"} ${result.data.member}.`);
    else setResult($("members-result"), result.error, true);
    await loadMembers();
  }

  // ---------------------------------------------------------------------------------------
  // Whether /ws accepts this page's origin (ALLOWED_CORS_ORIGIN): a refused upgrade only
  // shows up in a browser as a socket that closes, so ask once and say it on the page.

  async function checkOrigin() {
    const url = `console/config.json?origin=${encodeURIComponent(location.origin)}`;
    const result = await api("GET", url);
    if (!result.ok || result.data.origin_allowed !== false) return;
    state.originAllowed = false;
    if (state.token) disconnect();
    setConnection("disconnected", "this page's origin is not allowed");
    show(
      $("origin-warning"),
      `This gateway's ALLOWED_CORS_ORIGIN does not include this page's origin (${location.origin}), ` +
        "so its WebSocket refuses the console (403): live events cannot be shown. " +
        "Log in, topics and publishing still work (same-origin HTTP). Add the origin to ALLOWED_CORS_ORIGIN to fix it.",
    );
  }

  // ---------------------------------------------------------------------------------------
  // Wiring

  function onSubmit(testid, handler) {
    $(testid).addEventListener("submit", (event) => {
      event.preventDefault();
      handler();
    });
  }

  function wire() {
    onSubmit("login-form", () => authenticate("users/login"));
    $("register-submit").addEventListener("click", () => authenticate("users/register"));
    $("logout").addEventListener("click", () => logout(""));
    $("reconnect-now").addEventListener("click", () => {
      if (state.retryTimer) connect();
    });
    onSubmit("create-form", createTopic);
    onSubmit("subscribe-form", () => {
      const lastN = Number.parseInt($("subscribe-last-n").value, 10);
      subscribe($("topic-name").value.trim(), Number.isInteger(lastN) && lastN >= 0 ? lastN : 0);
    });
    $("unsubscribe-submit").addEventListener("click", () => unsubscribe($("topic-name").value.trim()));
    onSubmit("publish-form", publish);
    $("publish-payload").addEventListener("input", parsePayload);
    $("publish-payload").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        publish();
      }
    });
    $("publish-format").addEventListener("click", () => {
      const parsed = parsePayload();
      if (parsed.ok) $("publish-payload").value = JSON.stringify(parsed.value, null, 2);
    });
    onSubmit("members-form", () => changeMember("PUT", $("member-username").value.trim()));
    $("members-close").addEventListener("click", () => {
      state.membersTopic = null;
      $("members-panel").hidden = true;
    });
    $("notices-clear").addEventListener("click", () => $("notices").replaceChildren());
    $("event-log-clear").addEventListener("click", () => {
      state.logQueue = [];
      $("event-log").replaceChildren();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") refreshTopics();
      else clearTimeout(state.pollTimer);
    });
  }

  wire();
  checkOrigin();
  const saved = restoreSession();
  if (saved) login(saved.token, saved.user);
})();
