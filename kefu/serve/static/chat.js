// kefu web chat: streams answers from POST /v1/chat/completions (SSE), shows their sources,
// takes thumbs up/down feedback and asks for a person. Plain JavaScript, no build step.
// Model text is only ever rendered through textContent, never innerHTML.
"use strict";

(function () {
  // Every string the interface shows, in both languages. {name}, {status} are filled in.
  const STRINGS = {
    en: {
      subtitle: "Customer support",
      greeting: "Hello! How can I help you today?",
      placeholder: "Type your message…",
      inputLabel: "Message",
      hint: "Enter to send, Shift+Enter for a new line",
      send: "Send",
      handoff: "Talk to a person",
      handoffMessage: "I want to talk to a person",
      handoffNote: "A person will take over this conversation shortly.",
      newConversation: "New chat",
      langToggle: "中文",
      langToggleLabel: "切换到中文 (Switch to Chinese)",
      conversation: "Conversation",
      you: "You said:",
      assistantSaid: "{name} said:",
      typing: "{name} is typing…",
      sources: "Sources",
      feedbackQuestion: "Was this helpful?",
      helpful: "Helpful",
      notHelpful: "Not helpful",
      feedbackThanks: "Thanks for your feedback!",
      errorPrefix: "Error:",
      errorStatus: "The server answered with status {status}.",
      errorNetwork: "Could not reach the server. Check your connection and try again.",
      errorInterrupted: "The answer was interrupted. Please try again.",
      requestId: "request id",
    },
    zh: {
      subtitle: "在线客服",
      greeting: "您好！请问有什么可以帮您？",
      placeholder: "请输入您的问题…",
      inputLabel: "消息",
      hint: "按 Enter 发送，Shift+Enter 换行",
      send: "发送",
      handoff: "转人工",
      handoffMessage: "转人工",
      handoffNote: "人工客服将很快接手本次对话。",
      newConversation: "新对话",
      langToggle: "EN",
      langToggleLabel: "Switch to English (切换到英文)",
      conversation: "对话",
      you: "您说：",
      assistantSaid: "{name}说：",
      typing: "{name}正在输入…",
      sources: "参考来源",
      feedbackQuestion: "这个回答有帮助吗？",
      helpful: "有帮助",
      notHelpful: "没有帮助",
      feedbackThanks: "感谢您的反馈！",
      errorPrefix: "出错了：",
      errorStatus: "服务器返回状态码 {status}。",
      errorNetwork: "无法连接服务器，请检查网络后重试。",
      errorInterrupted: "回答中断了，请重试。",
      requestId: "请求编号",
    },
  };

  const CONVERSATION_KEY = "kefu.conversation_id";
  const LANGUAGE_KEY = "kefu.language";

  const $ = (id) => document.getElementById(id);
  const messages = $("messages");
  const form = $("composer");
  const input = $("input");
  const sendButton = $("send");
  const handoffButton = $("handoff");
  const newButton = $("new-conversation");
  const langToggle = $("lang-toggle");
  const nameHeading = $("assistant-name");

  const state = {
    language: initialLanguage(),
    assistantName: templated("kefu-assistant-name"),
    model: templated("kefu-model"),
    greetings: { en: templated("kefu-greeting-en"), zh: templated("kefu-greeting-zh") },
    conversationId: storageGet(sessionStorage, CONVERSATION_KEY),
    busy: false,
  };

  // ---- small helpers -------------------------------------------------------------------

  /** The content of <meta name=...>, or null when the server left the placeholder as is. */
  function templated(name) {
    const meta = document.querySelector(`meta[name="${name}"]`);
    const value = meta ? meta.content.trim() : "";
    return value && !value.startsWith("{{") ? value : null;
  }

  function storageGet(storage, key) {
    try {
      return storage.getItem(key);
    } catch (_) {
      return null; // storage may be disabled (private mode, sandboxed frame)
    }
  }

  function storageSet(storage, key, value) {
    try {
      if (value === null) storage.removeItem(key);
      else storage.setItem(key, value);
    } catch (_) {
      // the chat still works for this page, it just will not survive a reload
    }
  }

  function initialLanguage() {
    const saved = storageGet(localStorage, LANGUAGE_KEY);
    if (saved && STRINGS[saved]) return saved;
    const preferred = navigator.languages && navigator.languages.length
      ? navigator.languages[0] : navigator.language || "en";
    return preferred.toLowerCase().startsWith("zh") ? "zh" : "en";
  }

  function t(key, values) {
    let text = STRINGS[state.language][key] || STRINGS.en[key] || key;
    const fill = Object.assign({ name: displayName() }, values || {});
    for (const [name, value] of Object.entries(fill)) text = text.split(`{${name}}`).join(value);
    return text;
  }

  function displayName() {
    return state.assistantName || "Assistant";
  }

  function greeting() {
    return state.greetings[state.language] || STRINGS[state.language].greeting;
  }

  function el(tag, attributes, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** An element whose text follows the language toggle. */
  function i18n(tag, key, attributes) {
    const node = el(tag, Object.assign({ "data-i18n": key }, attributes || {}), t(key));
    return node;
  }

  function nearBottom() {
    return messages.scrollHeight - messages.scrollTop - messages.clientHeight < 80;
  }

  function scrollDown(force) {
    if (force || nearBottom()) messages.scrollTop = messages.scrollHeight;
  }

  // ---- language ------------------------------------------------------------------------

  function applyLanguage() {
    document.documentElement.lang = state.language === "zh" ? "zh-CN" : "en";
    for (const node of document.querySelectorAll("[data-i18n]")) {
      node.textContent = t(node.dataset.i18n);
    }
    for (const node of document.querySelectorAll("[data-i18n-placeholder]")) {
      node.placeholder = t(node.dataset.i18nPlaceholder);
    }
    for (const node of document.querySelectorAll("[data-i18n-aria-label]")) {
      node.setAttribute("aria-label", t(node.dataset.i18nAriaLabel));
    }
    langToggle.lang = state.language === "zh" ? "en" : "zh";
    const greetingBubble = messages.querySelector('[data-testid="greeting"]');
    if (greetingBubble) greetingBubble.textContent = greeting();
  }

  function toggleLanguage() {
    state.language = state.language === "zh" ? "en" : "zh";
    storageSet(localStorage, LANGUAGE_KEY, state.language);
    applyLanguage();
  }

  function setAssistantName(name) {
    state.assistantName = name;
    nameHeading.textContent = name;
    document.title = name;
    applyLanguage();
  }

  // ---- messages on screen --------------------------------------------------------------

  /** A message row: a hidden "who said it" label for screen readers, then the bubble. */
  function addBubble(role, text, testid) {
    const row = el("div", { class: `row row-${role}` });
    const who = role === "user" ? i18n("span", "you") : i18n("span", "assistantSaid");
    who.classList.add("visually-hidden");
    const bubble = el("div", { class: `bubble bubble-${role}`, "data-testid": testid }, text);
    row.append(who, bubble);
    messages.append(row);
    scrollDown(true);
    return { row, bubble };
  }

  function addNote(text, kind) {
    const attributes = kind === "error"
      ? { class: "note note-error", role: "alert", "data-testid": "error-note" }
      : { class: "note", role: "status", "data-testid": "system-note" };
    const note = el("div", attributes);
    note.append(document.createTextNode(text));
    messages.append(note);
    scrollDown(true);
    return note;
  }

  function addError(message, requestId) {
    const note = addNote(`${t("errorPrefix")} ${message}`, "error");
    if (requestId) {
      note.append(el("span", { class: "request-id" }, ` (${t("requestId")} ${requestId})`));
    }
    return note;
  }

  /** Links to an answer's sources: title → url in a new tab, or the title alone. */
  function renderSources(row, sources) {
    const seen = new Set();
    const unique = sources.filter((source) => {
      const key = `${source.title}\u0000${source.url || ""}`;
      if (!source.title || seen.has(key)) return false;
      seen.add(key);
      return true;
    });
    if (!unique.length) return;
    const box = el("div", { class: "sources", "data-testid": "sources" });
    box.append(i18n("span", "sources", { class: "sources-label" }));
    const list = el("ul");
    for (const source of unique) {
      const item = el("li", { "data-testid": "source" });
      const url = safeUrl(source.url);
      if (url) {
        item.append(el("a", {
          href: url, target: "_blank", rel: "noopener noreferrer", "data-testid": "source-link",
        }, source.title));
      } else {
        item.append(el("span", { "data-testid": "source-title" }, source.title));
      }
      list.append(item);
    }
    box.append(list);
    row.append(box);
  }

  /** Only http(s) links: a source's url comes from the knowledge base, not from us. */
  function safeUrl(url) {
    if (!url) return null;
    try {
      const parsed = new URL(url, window.location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (_) {
      return null;
    }
  }

  function renderFeedback(row, messageId) {
    const box = el("div", { class: "feedback", role: "group" });
    box.setAttribute("aria-label", t("feedbackQuestion"));
    box.dataset.i18nAriaLabel = "feedbackQuestion";
    const up = el("button", {
      type: "button", class: "thumb", "data-testid": "thumbs-up", "aria-pressed": "false",
      "data-i18n-aria-label": "helpful", "aria-label": t("helpful"), title: t("helpful"),
    });
    const down = el("button", {
      type: "button", class: "thumb", "data-testid": "thumbs-down", "aria-pressed": "false",
      "data-i18n-aria-label": "notHelpful", "aria-label": t("notHelpful"), title: t("notHelpful"),
    });
    up.append(thumbIcon(false));
    down.append(thumbIcon(true));
    const thanks = el("span", { class: "feedback-thanks", "aria-live": "polite" });
    up.addEventListener("click", () => sendFeedback(messageId, 1, up, [up, down], thanks));
    down.addEventListener("click", () => sendFeedback(messageId, -1, down, [up, down], thanks));
    box.append(up, down, thanks);
    row.append(box);
  }

  /** A thumb drawn inline (an emoji needs a font the visitor may not have). */
  function thumbIcon(down) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "18");
    svg.setAttribute("height", "18");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    if (down) svg.setAttribute("transform", "rotate(180)");
    const path = document.createElementNS(ns, "path");
    path.setAttribute("fill", "currentColor");
    path.setAttribute("d", "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05c.09-.23.14-.47.14-.73v-2z");
    svg.append(path);
    return svg;
  }

  async function sendFeedback(messageId, rating, pressed, buttons, thanks) {
    buttons.forEach((button) => { button.disabled = true; });
    const reply = await postJson("/v1/feedback", {
      conversation_id: state.conversationId,
      message_id: messageId,
      rating,
    });
    if (!reply) {
      buttons.forEach((button) => { button.disabled = false; });
      return;
    }
    pressed.setAttribute("aria-pressed", "true");
    thanks.dataset.i18n = "feedbackThanks";
    thanks.dataset.testid = "feedback-recorded";
    thanks.textContent = t("feedbackThanks");
  }

  // ---- HTTP ----------------------------------------------------------------------------

  /** The message of an OpenAI-style JSON error body, or a generic one with the status. */
  async function errorOf(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) {
        return { message: String(body.error.message), requestId: body.error.request_id };
      }
      if (body && typeof body.detail === "string") return { message: body.detail };
    } catch (_) {
      // not JSON (a proxy's HTML page, say)
    }
    return {
      message: t("errorStatus", { status: String(response.status) }),
      requestId: response.headers.get("x-request-id"),
    };
  }

  /** POST JSON; on any failure show an error note and return null. */
  async function postJson(url, body) {
    let response;
    try {
      response = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
    } catch (_) {
      addError(t("errorNetwork"));
      return null;
    }
    if (!response.ok) {
      const error = await errorOf(response);
      addError(error.message, error.requestId);
      return null;
    }
    try {
      return await response.json();
    } catch (_) {
      addError(t("errorStatus", { status: String(response.status) }));
      return null;
    }
  }

  /**
   * Read a text/event-stream body and call onData with each event's data, as events arrive.
   * Lines may be split anywhere across network chunks, a CR LF pair included.
   */
  async function readEvents(body, onData) {
    const reader = body.getReader();
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    let data = [];

    const line = (text) => {
      if (text === "") { // a blank line ends an event
        if (data.length) onData(data.join("\n"));
        data = [];
        return;
      }
      if (text.startsWith(":")) return; // a comment (keep-alive ping)
      const colon = text.indexOf(":");
      const field = colon === -1 ? text : text.slice(0, colon);
      let value = colon === -1 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
    };

    const drain = (final) => {
      for (;;) {
        const match = /\r\n|\r|\n/.exec(buffer);
        if (!match) break;
        // A CR at the very end may be the first half of a CR LF still on its way.
        if (match[0] === "\r" && match.index === buffer.length - 1 && !final) break;
        line(buffer.slice(0, match.index));
        buffer = buffer.slice(match.index + match[0].length);
      }
    };

    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      drain(false);
    }
    buffer += decoder.decode();
    drain(true);
    if (buffer) line(buffer);
    line(""); // an event the server did not end with a blank line
  }

  // ---- sending -------------------------------------------------------------------------

  function setBusy(busy) {
    state.busy = busy;
    input.disabled = busy;
    sendButton.disabled = busy;
    messages.setAttribute("aria-busy", busy ? "true" : "false");
    if (!busy) input.focus();
  }

  function rememberConversation(id) {
    if (!id || id === state.conversationId) return;
    state.conversationId = String(id);
    storageSet(sessionStorage, CONVERSATION_KEY, state.conversationId);
  }

  async function ensureModel() {
    if (!state.model) await loadModels();
    return state.model;
  }

  async function send(text) {
    text = text.trim();
    if (!text || state.busy) return;
    setBusy(true);
    addBubble("user", text, "user-message");
    const { row, bubble } = addBubble("assistant", "", "assistant-message");
    bubble.classList.add("pending");
    bubble.setAttribute("aria-busy", "true");
    const typing = i18n("span", "typing", { class: "visually-hidden" });
    row.append(typing);

    const answer = { text: document.createTextNode(""), sources: [], handoff: false, messageId: null };
    bubble.append(answer.text);
    let finished = false; // [DONE] or a finish_reason arrived
    let failed = false; // an error was already shown

    try {
      const kefu = { channel: "web" };
      if (state.conversationId) kefu.conversation_id = state.conversationId;
      const body = {
        model: await ensureModel(),
        stream: true,
        messages: [{ role: "user", content: text }],
        kefu,
      };
      let response;
      try {
        response = await fetch("/v1/chat/completions", {
          method: "POST",
          headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
          body: JSON.stringify(body),
        });
      } catch (_) {
        row.remove();
        addError(t("errorNetwork"));
        return;
      }
      if (!response.ok) {
        row.remove();
        const error = await errorOf(response);
        addError(error.message, error.requestId);
        return;
      }

      await readEvents(response.body, (data) => {
        if (data === "[DONE]") {
          finished = true;
          return;
        }
        let chunk;
        try {
          chunk = JSON.parse(data);
        } catch (_) {
          return; // not ours to understand; the answer carries on
        }
        if (chunk.error) {
          failed = true;
          addError(String(chunk.error.message || chunk.error), chunk.error.request_id);
          return;
        }
        if (chunk.kefu) {
          rememberConversation(chunk.kefu.conversation_id);
          if (Array.isArray(chunk.kefu.sources) && chunk.kefu.sources.length) {
            answer.sources = chunk.kefu.sources;
          }
          if (chunk.kefu.handoff) answer.handoff = true;
          if (chunk.kefu.message_id !== undefined && chunk.kefu.message_id !== null) {
            answer.messageId = chunk.kefu.message_id;
          }
        }
        const choice = chunk.choices && chunk.choices[0];
        if (choice && choice.finish_reason) finished = true;
        const content = choice && choice.delta && choice.delta.content;
        if (content) {
          const follow = nearBottom();
          bubble.classList.remove("pending");
          answer.text.appendData(content);
          if (follow) scrollDown(true);
        }
      });
    } catch (_) {
      // the connection dropped mid-answer; reported below
    } finally {
      typing.remove();
      bubble.classList.remove("pending");
      bubble.setAttribute("aria-busy", "false");
      if (row.isConnected) finishAnswer(row, bubble, answer, finished || failed);
      setBusy(false);
    }
  }

  /** Sources, feedback buttons and notes under an answer once its stream has ended. */
  function finishAnswer(row, bubble, answer, ended) {
    if (answer.messageId !== null) bubble.dataset.messageId = String(answer.messageId);
    if (!answer.text.data) row.classList.add("row-empty");
    if (answer.sources.length) renderSources(row, answer.sources);
    if (answer.messageId !== null) renderFeedback(row, answer.messageId);
    if (answer.handoff) addNote(t("handoffNote"));
    if (!ended) addError(t("errorInterrupted"));
  }

  async function requestHandoff() {
    if (state.busy) return;
    if (!state.conversationId) {
      // No conversation to hand over yet: ask through the chat, which starts one.
      await send(t("handoffMessage"));
      return;
    }
    handoffButton.disabled = true;
    try {
      const reply = await postJson("/v1/handoffs/request", { conversation_id: state.conversationId });
      if (reply) addNote(reply.message ? String(reply.message) : t("handoffNote"));
    } finally {
      handoffButton.disabled = false;
    }
  }

  function newConversation() {
    if (state.busy) return;
    state.conversationId = null;
    storageSet(sessionStorage, CONVERSATION_KEY, null);
    messages.replaceChildren();
    showGreeting();
    input.focus();
  }

  // ---- start-up ------------------------------------------------------------------------

  function showGreeting() {
    addBubble("assistant", greeting(), "greeting");
  }

  /** The assistant's name and model from GET /v1/models, when the server did not template them. */
  async function loadModels() {
    try {
      const response = await fetch("/v1/models", { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const body = await response.json();
      const first = body && Array.isArray(body.data) ? body.data[0] : null;
      if (!first) return;
      if (!state.model) state.model = first.id;
      if (!state.assistantName) {
        const extension = first.kefu || {};
        setAssistantName(extension.assistant || first.id);
      }
    } catch (_) {
      // the page still works; the request will say what is wrong
    }
  }

  /** After a reload, show the conversation this tab was having (best effort). */
  async function loadHistory() {
    const id = state.conversationId;
    let response;
    try {
      response = await fetch(`/v1/conversations/${encodeURIComponent(id)}`, {
        headers: { Accept: "application/json" },
      });
    } catch (_) {
      return;
    }
    if (response.status === 404) {
      state.conversationId = null;
      storageSet(sessionStorage, CONVERSATION_KEY, null);
      return;
    }
    if (!response.ok || state.busy || id !== state.conversationId) return;
    let conversation;
    try {
      conversation = await response.json();
    } catch (_) {
      return;
    }
    for (const message of conversation.messages || []) {
      if (message.role === "user") {
        addBubble("user", String(message.text || ""), "user-message");
      } else if (message.role === "assistant") {
        const { row, bubble } = addBubble("assistant", String(message.text || ""), "assistant-message");
        if (message.id !== undefined && message.id !== null) bubble.dataset.messageId = String(message.id);
        if (Array.isArray(message.sources)) renderSources(row, message.sources);
        if (message.id !== undefined && message.id !== null) renderFeedback(row, message.id);
      } else if (message.text) {
        addNote(String(message.text));
      }
    }
  }

  function autoGrow() {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim() || state.busy) return;
    input.value = "";
    autoGrow();
    send(text);
  });
  input.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter is a new line; Enter that confirms an IME composition does neither.
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    form.requestSubmit();
  });
  input.addEventListener("input", autoGrow);
  langToggle.addEventListener("click", toggleLanguage);
  handoffButton.addEventListener("click", requestHandoff);
  newButton.addEventListener("click", newConversation);

  if (state.assistantName) setAssistantName(state.assistantName);
  else nameHeading.textContent = displayName();
  applyLanguage();
  showGreeting();
  if (!state.model || !state.assistantName) loadModels();
  if (state.conversationId) loadHistory();
  input.focus();
  document.body.dataset.ready = "true";
})();
