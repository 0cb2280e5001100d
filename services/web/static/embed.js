/* ackbot comments: one script tag and one element.
 *
 *   <div id="ackbot-comments" data-thread="my-post"></div>
 *   <script src="https://comments.example.com/embed.js" defer></script>
 *
 * data-thread is the page's key (1-120 of [A-Za-z0-9._:~-]); without it, the page's path.
 * It calls the front door it was loaded from (Connect protocol, JSON over HTTP/1.1). Every text
 * is set with textContent, never as HTML: a comment cannot add markup or script to the page.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var base = new URL(script ? script.src : "/", location.href).origin;
  var API = base + "/ackbot.web.v1.CommentService/";
  var root = document.getElementById("ackbot-comments");
  if (!root) return;

  function threadOf() {
    var given = root.getAttribute("data-thread");
    if (given) return given;
    var path = location.pathname.replace(/^\/+|\/+$/g, "").replace(/\//g, ":");
    return (path.replace(/[^A-Za-z0-9._:~-]/g, "~") || "index").slice(0, 120);
  }
  var thread = threadOf();

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- the layout -----------------------------------------------------------------------------
  var css = document.createElement("link");
  css.rel = "stylesheet";
  css.href = base + "/embed.css";
  document.head.appendChild(css);

  var box = el("section", "ackbot");
  var older = el("button", "ackbot-older", "Show older comments");
  older.type = "button";
  older.hidden = true;
  var list = el("ol", "ackbot-list");
  var status = el("p", "ackbot-status");
  status.setAttribute("role", "status");
  var form = el("form", "ackbot-form");
  var name = el("input", "ackbot-name");
  name.name = "author";
  name.placeholder = "Your name";
  name.autocomplete = "nickname";
  var text = el("textarea", "ackbot-text");
  text.name = "text";
  text.placeholder = "Write a comment";
  text.rows = 3;
  var count = el("span", "ackbot-count");
  var post = el("button", "ackbot-post", "Post");
  post.type = "submit";
  var error = el("p", "ackbot-error");
  error.setAttribute("role", "alert");
  form.append(name, text, count, post, error);
  box.append(older, list, status, form);
  root.replaceChildren(box);
  try { name.value = localStorage.getItem("ackbot-name") || ""; } catch (e) { /* no storage */ }

  // -- calls ----------------------------------------------------------------------------------
  function Failure(code, message) { this.code = code; this.message = message; }

  function call(method, body) {
    return fetch(API + method, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Connect-Protocol-Version": "1" },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) throw new Failure(data.code || "unavailable", data.message || "");
        return data;
      });
    }, function () { throw new Failure("unavailable", ""); });
  }

  function explain(failure) {
    if (failure.code === "resource_exhausted") return "Too fast: " + failure.message;
    if (failure.code === "invalid_argument") return "Not posted: " + failure.message;
    if (failure.code === "permission_denied") return "This site may not show these comments.";
    return "The comments are unavailable right now; try again shortly.";
  }

  // -- the thread -----------------------------------------------------------------------------
  var shown = {}; // id -> {data, node}
  var lastSequence = 0;
  var limits = { maxTextBytes: 4096, maxAuthorChars: 40 };
  var nextPage = "";

  function seq(c) { return Number(c.sequence || 0); }

  function render(c) {
    var node = el("li", "ackbot-comment");
    node.dataset.id = c.id;
    var head = el("div", "ackbot-meta");
    head.append(el("span", "ackbot-author", c.author || ""));
    if (c.createTime) {
      var when = el("time", "ackbot-time", new Date(c.createTime).toLocaleString());
      when.dateTime = c.createTime;
      head.append(" ", when);
    }
    node.append(head, el("p", "ackbot-body", c.text || ""));
    if (c.state === "COMMENT_STATE_ANSWERING") {
      node.append(el("p", "ackbot-writing", "the bot is writing\u2026"));
    } else if (c.state === "COMMENT_STATE_UNANSWERED") {
      node.append(el("p", "ackbot-unanswered", "the bot could not answer this one"));
    }
    if (c.reply) {
      var reply = el("div", "ackbot-reply");
      reply.dataset.id = c.reply.id;
      var rhead = el("div", "ackbot-meta");
      rhead.append(el("span", "ackbot-author", c.reply.author || ""), " ",
        el("span", "ackbot-badge", "bot"));
      reply.append(rhead, el("p", "ackbot-body", c.reply.text || ""));
      node.append(reply);
    }
    return node;
  }

  function upsert(c) {
    if (!c || !c.id) return;
    lastSequence = Math.max(lastSequence, seq(c), c.reply ? seq(c.reply) : 0);
    var old = shown[c.id];
    if (old && old.data.reply && !c.reply) return; // an answer is never taken back
    var node = render(c);
    if (old) {
      old.node.replaceWith(node);
    } else {
      var after = null;
      for (var i = list.children.length - 1; i >= 0; i--) {
        var other = shown[list.children[i].dataset.id];
        if (other && seq(other.data) < seq(c)) { after = list.children[i]; break; }
      }
      if (after) after.after(node); else list.prepend(node);
    }
    shown[c.id] = { data: c, node: node };
  }

  function load(token) {
    return call("ListThread", { thread: thread, pageToken: token || "" }).then(function (data) {
      if (data.limits) limits = data.limits;
      if (!token) lastSequence = Math.max(lastSequence, Number(data.lastSequence || 0));
      (data.comments || []).forEach(upsert);
      nextPage = data.nextPageToken || "";
      older.hidden = !nextPage;
      checkSize();
    });
  }

  older.addEventListener("click", function () {
    older.disabled = true;
    load(nextPage).catch(function (f) { status.textContent = explain(f); })
      .then(function () { older.disabled = false; });
  });

  // -- live: WatchThread, a Connect server stream of enveloped JSON frames --------------------
  var retry = 0;
  function watch() {
    var body = new TextEncoder().encode(JSON.stringify({ thread: thread, afterSequence: String(lastSequence) }));
    var frame = new Uint8Array(5 + body.length);
    new DataView(frame.buffer).setUint32(1, body.length);
    frame.set(body, 5);
    fetch(API + "WatchThread", {
      method: "POST",
      headers: { "Content-Type": "application/connect+json", "Connect-Protocol-Version": "1" },
      body: frame
    }).then(function (response) {
      if (!response.ok || !response.body) throw new Failure("unavailable", "");
      status.textContent = "";
      box.classList.add("ackbot-live");
      var reader = response.body.getReader();
      var buffer = new Uint8Array(0);
      function pump() {
        return reader.read().then(function (part) {
          if (part.done) return;
          var joined = new Uint8Array(buffer.length + part.value.length);
          joined.set(buffer);
          joined.set(part.value, buffer.length);
          buffer = joined;
          while (buffer.length >= 5) {
            var size = new DataView(buffer.buffer, buffer.byteOffset).getUint32(1);
            if (buffer.length < 5 + size) break;
            var flags = buffer[0];
            var data = JSON.parse(new TextDecoder().decode(buffer.subarray(5, 5 + size)));
            buffer = buffer.slice(5 + size);
            if (flags & 2) return; // end of stream (an error, or the front door stopping)
            retry = 0;
            upsert(data.comment);
          }
          return pump();
        });
      }
      return pump();
    }).catch(function () { /* watched again below */ }).then(function () {
      box.classList.remove("ackbot-live");
      var delay = Math.min(30000, 500 * Math.pow(2, retry++));
      setTimeout(function () {
        // A gap: list again (newest page) so nothing is missed, then watch from there.
        load("").catch(function () {}).then(watch);
      }, delay);
    });
  }

  // -- the form -------------------------------------------------------------------------------
  function checkSize() {
    var bytes = new TextEncoder().encode(text.value).length;
    var max = Number(limits.maxTextBytes || 0);
    count.textContent = bytes + " / " + max + " bytes";
    var over = max && bytes > max;
    count.classList.toggle("ackbot-over", !!over);
    post.disabled = !!over;
    if (over) error.textContent = "Too long: " + bytes + " bytes; the limit is " + max + ".";
    else if (error.dataset.size) error.textContent = "";
    error.dataset.size = over ? "1" : "";
    name.maxLength = Number(limits.maxAuthorChars || 40);
  }
  text.addEventListener("input", checkSize);

  var pending = null;
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var author = name.value.trim();
    if (!author) { error.textContent = "Please give a name."; name.focus(); return; }
    if (!text.value.trim()) { error.textContent = "Please write something."; return; }
    try { localStorage.setItem("ackbot-name", author); } catch (e) { /* no storage */ }
    post.disabled = true;
    error.textContent = "";
    // The same comment sent again (after a failure) keeps its request id: stored once.
    if (!pending || pending.text !== text.value || pending.author !== author) {
      var bytes = crypto.getRandomValues(new Uint8Array(16));
      pending = { text: text.value, author: author, id: Array.from(bytes, function (b) {
        return (b + 256).toString(16).slice(1);
      }).join("") };
    }
    call("PostComment", { thread: thread, author: author, text: text.value, requestId: pending.id })
      .then(function (data) {
        // The watch may have shown it already, and newer (being answered): keep that.
        if (data.comment && !shown[data.comment.id]) upsert(data.comment);
        text.value = "";
        pending = null;
      }, function (failure) {
        error.textContent = explain(failure);
      }).then(function () { post.disabled = false; checkSize(); });
  });

  status.textContent = "Loading comments\u2026";
  load("").then(function () { status.textContent = ""; watch(); }, function (failure) {
    status.textContent = explain(failure);
    box.classList.add("ackbot-failed");
  });
})();
