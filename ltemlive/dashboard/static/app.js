// ltemlive dashboard page: vanilla JS, no framework, nothing from the internet.
//
// One websocket (/ws) brings the run's state: the whole state at once on connect, then every change, and a
// ping every few seconds when nothing changes. On a close (or 15 s of silence) the page reconnects with a
// growing delay and re-renders from the state the server sends first, so a dropped connection never leaves
// it showing the past. Pictures are PNGs the dashboard renders; their versions travel in the state and the
// page reloads an image only when its version changes. Data is written with textContent only (no HTML).
"use strict";

(() => {
  const PICTURES = ["phase", "induction", "amplitude", "loss", "calibration"];
  const TOKEN_KEY = "ltemlive-dashboard-token";
  const $ = (id) => document.getElementById(id);

  // A small hook for tests and the curious: what the page holds now (times: ms since navigation start).
  const hook = (window.ltemlive = {
    lastSeq: 0, state: null, summary: null, phaseVersion: 0, versions: {}, loaded: {},
    connectedAt: null, firstStateAt: null, stateAt: null, heardAt: null, reconnects: 0, ws: null, lastReply: null,
    logins: false, who: null,
  });

  // -- the operator token: from ?token= once, then sessionStorage (this tab only), never left in the URL ---------
  const tokenInput = $("token");
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || "";
  tokenInput.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim()));
  tokenInput.addEventListener("change", () => { if (hook.logins) logIn(); });

  // -- logins (a dashboard started with --keys): reading needs a login, commands an operator's -------------------
  // The login sets an HttpOnly cookie that the websocket and the pictures carry; commands send the Bearer token.
  async function start() {
    let who = {};
    try { who = await (await fetch("/api/whoami", { cache: "no-store" })).json(); } catch { /* retried by ws */ }
    hook.logins = !!who.logins;
    if (!hook.logins) { connect(); return; }
    $("token-label").textContent = "login";
    tokenInput.placeholder = "your dashboard login (ltemlive keys login NAME)";
    if (who.name) { showWho(who); connect(); } else if (tokenInput.value.trim()) logIn(); else needLogin();
  }

  async function logIn() {
    const token = tokenInput.value.trim();
    if (!token) { needLogin(); return; }
    let r, body = {};
    try {
      r = await fetch("/api/login", { method: "POST", headers: { Authorization: "Bearer " + token }, cache: "no-store" });
      body = await r.json().catch(() => ({}));
    } catch { needLogin("the dashboard does not answer"); return; }
    if (!r.ok) { needLogin(body.message || "login refused"); return; }
    showWho(body);
    // The websocket carries the login it was opened with: open a new one under this login.
    const old = hook.ws;
    hook.ws = null;
    if (old) old.close();
    connect();
  }

  function showWho(who) {
    hook.who = { name: who.name, role: who.role };
    $("who").textContent = `${who.name} (${who.role}${who.role === "operator" ? "" : ": read only"})`;
  }

  function needLogin(why) {
    hook.who = null;
    $("who").textContent = "";
    const el = $("conn");
    el.textContent = why ? `log in: ${why}` : "log in to see the run";
    el.className = "conn conn-down";
  }

  // -- the websocket ---------------------------------------------------------------------------------------------
  let backoffMs = 250;
  let lastHeard = 0;

  function connect() {
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
    hook.ws = ws;
    ws.onopen = () => {
      hook.connectedAt = performance.now();
      lastHeard = performance.now();
      backoffMs = 250;
      setConnection(true);
    };
    ws.onmessage = (e) => {
      lastHeard = hook.heardAt = performance.now();
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      if (msg.type === "state") {
        hook.lastSeq = msg.seq;
        try {
          render(msg.state);
        } catch (err) { // one odd state must not stop the next ones; the console says what went wrong
          hook.renderError = String(err);
          console.error("ltemlive: cannot show this state:", err);
        }
      }
    };
    ws.onerror = () => ws.close();
    ws.onclose = (e) => {
      if (hook.ws !== ws) return;
      hook.ws = null;
      if (e.code === 4401) { needLogin("login revoked or replaced"); return; } // no retry: a new login reconnects
      hook.reconnects += 1;
      setConnection(false);
      const delay = backoffMs * (0.8 + 0.4 * Math.random()); // jitter: many pages do not come back in step
      backoffMs = Math.min(2 * backoffMs, 5000);
      setTimeout(connect, delay);
    };
  }

  // The server pings every 5 s: three missed pings mean a dead connection that has not closed (a laptop lid).
  setInterval(() => {
    if (hook.ws && hook.ws.readyState === WebSocket.OPEN && performance.now() - lastHeard > 15000) hook.ws.close();
  }, 2000);

  function setConnection(up) {
    const el = $("conn");
    el.textContent = up ? "live" : "reconnecting…";
    el.className = "conn " + (up ? "conn-up" : "conn-down");
  }

  // -- rendering the state --------------------------------------------------------------------------------------
  function render(s) {
    hook.summary = s;
    hook.state = s.state;
    hook.stateAt = performance.now();
    if (hook.firstStateAt === null) hook.firstStateAt = hook.stateAt;

    const state = $("run-state");
    state.textContent = s.state;
    state.className = "state state-" + s.state;
    $("run-id").textContent = (s.status && s.status.run_id) || "–";
    $("progress").textContent = progressText(s);
    renderAlerts(s);
    renderControls(s);
    renderPictures(s);
    renderDefocus(s);
    renderLog(s.log || []);
    const loss = s.loss && s.loss[s.loss.length - 1];
    $("loss-now").textContent = loss ? `series ${loss[0]}, it ${loss[1]}: ${fmt(loss[2], 4)}` : "";
    const g = s.gateway || {};
    $("footer-publisher").textContent = `publisher ${g.publisher || "?"} · ${g.publisher_alive ? "alive" : "silent"}`
      + (g.control ? "" : " · read-only (no --control)");
    const ms = g.render_ms_mean || {};
    $("footer-stats").textContent = "render ms: " + PICTURES.filter((n) => n in ms).map((n) => `${n} ${ms[n]}`).join(", ");
  }

  function progressText(s) {
    const p = s.progress || {}, f = s.frame || {}, st = s.status || {};
    const nSeries = p.n_series ?? f.n_series;
    const series = f.series ?? p.series;
    const parts = [];
    if (series !== undefined && series !== null) parts.push(`series ${series + 1}${nSeries ? " / " + nSeries : ""}`);
    if (f.index !== undefined && f.series === series) parts.push(`frame ${f.index + 1}${f.n_frames ? " / " + f.n_frames : ""}`);
    if (st.frames_written !== undefined) parts.push(`${st.frames_written} frames written`);
    if (s.last_frame_age_s !== null && s.last_frame_age_s !== undefined && s.state === "running") {
      parts.push(`last frame ${Math.max(0, s.last_frame_age_s).toFixed(0)} s ago`);
    }
    return parts.join(" · ") || "–";
  }

  function renderAlerts(s) {
    const box = $("alerts");
    box.replaceChildren();
    const list = [...(s.alerts || [])];
    for (const [name, err] of Object.entries(s.image_errors || {})) {
      list.push({ level: "warning", message: `cannot draw ${name}: ${err}` });
    }
    for (const a of list) {
      const div = document.createElement("div");
      div.className = "alert alert-" + (a.level === "error" ? "error" : "warning");
      div.textContent = a.message;
      box.append(div);
    }
  }

  function renderControls(s) {
    const control = !!(s.gateway && s.gateway.control);
    const monitor = hook.logins && hook.who && hook.who.role !== "operator";
    for (const id of ["btn-pause", "btn-resume", "btn-abort"]) {
      $(id).disabled = !control || monitor;
      $(id).title = !control ? "read-only: the dashboard was started without --control"
        : monitor ? "read only: your login's role is " + hook.who.role
          : hook.logins ? "needs an operator's login" : "needs the operator token";
    }
  }

  function renderPictures(s) {
    const images = s.images || {};
    for (const name of PICTURES) {
      const im = images[name];
      if (!im || hook.versions[name] === im.version) continue;
      hook.versions[name] = im.version;
      const img = $("img-" + name);
      const version = im.version;
      img.onload = () => {
        hook.loaded[name] = version;
        if (name === "phase") hook.phaseVersion = version;
      };
      img.src = `/api/picture/${name}.png?v=${version}`;
    }
  }

  function renderDefocus(s) {
    const r = s.result || {};
    const body = $("defocus").tBodies[0];
    body.replaceChildren();
    const nominal = r.defocus_nominal_m || [], refined = r.defocus_m || [], sigma = r.defocus_sigma_m || [];
    $("defocus-series").textContent = r.series !== undefined ? `series ${r.series}, refined vs nominal` : "";
    refined.forEach((d, i) => {
      const n = nominal[i];
      const row = body.insertRow();
      const ratio = n ? d / n : null;
      for (const text of [String(i), defocus(n), defocus(d), sigma[i] == null ? "–" : `${fmt(sigma[i] * 1e6, 2)} µm`,
        ratio === null ? "–" : fmt(ratio, 5)]) {
        row.insertCell().textContent = text;
      }
    });
    const h = s.calibration_history || [];
    const last = h[h.length - 1];
    $("calibration-now").textContent = last
      ? `calibration in force: scale ${fmt(last.scale, 5)}, offset ${fmt(last.offset_m * 1e6, 2)} µm `
        + `(series ${last.series}: ${last.accepted ? "" : "rejected: "}${last.reason})`
      : "";
  }

  function renderLog(entries) {
    const ol = $("log");
    ol.replaceChildren();
    for (const e of [...entries].reverse()) {
      const li = document.createElement("li");
      const t = document.createElement("time");
      t.textContent = e.t_epoch_s ? new Date(e.t_epoch_s * 1000).toLocaleTimeString([], { hour12: false }) : "";
      li.append(t, document.createTextNode(`${e.kind ? e.kind + ": " : ""}${e.message ?? ""}`));
      ol.append(li);
    }
  }

  function fmt(x, digits) {
    return typeof x === "number" && isFinite(x) ? x.toPrecision(digits).replace("-", "−") : "–";
  }

  function defocus(m) {
    if (typeof m !== "number" || !isFinite(m)) return "–";
    const text = Math.abs(m) >= 1e-3 ? `${(m * 1e3).toFixed(3)} mm` : `${(m * 1e6).toFixed(1)} µm`;
    return (m >= 0 ? "+" : "") + text.replace("-", "−");
  }

  // -- the operator's buttons -------------------------------------------------------------------------------------
  async function send(action) {
    if (action === "abort" && !confirm("Abort the run? The current series stops and the run ends.")) return;
    const out = $("command-reply");
    const token = tokenInput.value.trim();
    const headers = token ? { Authorization: "Bearer " + token } : {};
    out.className = "reply";
    out.textContent = `${action}…`;
    let reply;
    try {
      const r = await fetch("/api/command/" + action, { method: "POST", headers, cache: "no-store" });
      const body = await r.json().catch(() => ({}));
      reply = { action, status: r.status, ok: r.ok && body.ok !== false, message: body.message || r.statusText };
    } catch (err) {
      reply = { action, status: 0, ok: false, message: "the dashboard does not answer" };
    }
    hook.lastReply = reply;
    out.className = "reply " + (reply.ok ? "ok" : "refused");
    out.textContent = reply.ok ? `${action}: ${reply.message}` : `${action} refused (${reply.status}): ${reply.message}`;
  }

  for (const action of ["pause", "resume", "abort"]) $("btn-" + action).addEventListener("click", () => send(action));
  $("control-form").addEventListener("submit", (e) => e.preventDefault());

  start();
})();
