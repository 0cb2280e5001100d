/* ackbot comments: one script tag and one element.
 *
 *   <div id="ackbot-comments" data-thread="my-post"></div>
 *   <script src="https://comments.example.com/embed.js" defer></script>
 *
 * data-thread is the page's key (1-120 of [A-Za-z0-9._:~-]); without it, the page's path.
 * It calls the front door it was loaded from (Connect protocol, JSON over HTTP/1.1). Every text
 * is set with textContent, never as HTML: a comment cannot add markup or script to the page.
 *
 * The writer of a comment keeps its edit key in localStorage ("ackbot-own:" + thread): with it
 * the widget shows Delete and Edit under that comment until its window ends, and the comment
 * while it is held for moderation (awaiting moderation, shown to nobody else).
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

  // -- the writer's own comments: id -> {key, until (this browser's clock, ms)} -----------------
  var OWN = "ackbot-own:" + thread;
  var own = {};
  try { own = JSON.parse(localStorage.getItem(OWN) || "{}") || {}; } catch (e) { own = {}; }
  function saveOwn() {
    try { localStorage.setItem(OWN, JSON.stringify(own)); } catch (e) { /* no storage */ }
  }
  function keep(c, key, expireTime) {
    if (!c || !key) return;
    // The window as the server counts it, from now on this browser's clock (clocks differ).
    var left = Date.parse(expireTime) - Date.parse(c.createTime);
    own[c.id] = { key: key, until: Date.now() + (isFinite(left) ? left : 0) };
    saveOwn();
  }
  function editable(id) { return !!own[id] && Date.now() < own[id].until; }

  // A refusal of one's own delete or edit says why (not yours, too late, gone).
  function explainOwn(failure) {
    if (/^(permission_denied|failed_precondition|not_found)$/.test(failure.code)) {
      return "Not done: " + failure.message;
    }
    return explain(failure);
  }

  function explain(failure) {
    if (failure.code === "resource_exhausted") return "Too fast: " + failure.message;
    if (failure.code === "invalid_argument") return "Not posted: " + failure.message;
    if (failure.code === "permission_denied") return "This site may not show these comments.";
    return "The comments are unavailable right now; try again shortly.";
  }

  // -- the thread -----------------------------------------------------------------------------
  var shown = {}; // id -> {data, node}
  var gone = {}; // ids deleted: a late event never brings one back
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
    if (c.state === "COMMENT_STATE_HELD") {
      node.append(el("p", "ackbot-held", "awaiting moderation"));
    } else if (c.state === "COMMENT_STATE_ANSWERING") {
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
    if (editable(c.id)) node.append(controls(c, node));
    return node;
  }

  // Delete and Edit under the writer's own comment, while its window lasts.
  function controls(c, node) {
    var bar = el("div", "ackbot-own");
    var del = el("button", "ackbot-delete", "Delete");
    var edit = el("button", "ackbot-edit", "Edit");
    del.type = edit.type = "button";
    var problem = el("span", "ackbot-own-error");
    problem.setAttribute("role", "alert");
    bar.append(edit, " ", del, " ", problem);
    del.addEventListener("click", function () {
      del.disabled = edit.disabled = true;
      call("DeleteComment", { id: c.id, editKey: own[c.id].key }).then(function () {
        remove(c.id);
      }, function (failure) {
        problem.textContent = explainOwn(failure);
        del.disabled = edit.disabled = false;
      });
    });
    edit.addEventListener("click", function () {
      var body = node.querySelector(".ackbot-body");
      var area = el("textarea", "ackbot-edit-text");
      area.value = c.text || "";
      area.rows = 3;
      var save = el("button", "ackbot-save", "Save");
      var cancel = el("button", "ackbot-cancel", "Cancel");
      save.type = cancel.type = "button";
      var editor = el("div", "ackbot-editor");
      editor.append(area, save, " ", cancel);
      body.replaceWith(editor);
      bar.hidden = true;
      // While the writer types, news of this comment wait (a re-render would lose the text).
      node.dataset.editing = "1";
      function close() {
        editor.replaceWith(body);
        bar.hidden = false;
        delete node.dataset.editing;
        if (shown[c.id] && shown[c.id].node === node && shown[c.id].data !== c) refresh(c.id);
      }
      cancel.addEventListener("click", close);
      save.addEventListener("click", function () {
        save.disabled = true;
        var key = own[c.id] && own[c.id].key;
        call("EditComment", { id: c.id, editKey: key, text: area.value }).then(function (data) {
          remove(c.id);
          adopt(data);
        }, function (failure) {
          close();
          problem.textContent = explainOwn(failure);
        });
      });
    });
    // The controls go when the window does.
    setTimeout(function () { if (!editable(c.id)) bar.remove(); },
      Math.max(0, own[c.id].until - Date.now()) + 50);
    return bar;
  }

  // The writer's comment as PostComment or EditComment answered, with its key.
  function adopt(data) {
    if (!data.comment) return;
    keep(data.comment, data.editKey, data.editExpireTime);
    // The watch may have shown it already, and newer (being answered): keep that, with the
    // controls the key just brought.
    if (!shown[data.comment.id]) upsert(data.comment);
    else refresh(data.comment.id);
  }

  function refresh(id) {
    var item = shown[id];
    var node = render(item.data);
    item.node.replaceWith(node);
    item.node = node;
  }

  // A comment deleted (here, or anywhere: WatchThread's DELETED), or a reply of one.
  function remove(id) {
    gone[id] = true;
    if (own[id]) { delete own[id]; saveOwn(); }
    var old = shown[id];
    if (old) {
      old.node.remove();
      delete shown[id];
      return;
    }
    Object.keys(shown).forEach(function (other) {
      var item = shown[other];
      if (item.data.reply && item.data.reply.id === id) {
        item.data = Object.assign({}, item.data, { reply: null });
        if (!item.node.dataset.editing) refresh(other);
      }
    });
  }

  function upsert(c) {
    if (!c || !c.id) return;
    if (c.state === "COMMENT_STATE_DELETED") { remove(c.id); return; }
    if (gone[c.id]) return;
    lastSequence = Math.max(lastSequence, seq(c), c.reply ? seq(c.reply) : 0);
    var old = shown[c.id];
    if (old && old.data.reply && !c.reply) return; // an answer is never taken back
    if (old && old.node.dataset.editing) { old.data = c; return; } // shown when editing ends
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
    var mine = token ? [] : Object.keys(own).slice(-50).map(function (id) {
      return { id: id, editKey: own[id].key };
    });
    var request = { thread: thread, pageToken: token || "", ownComments: mine };
    return call("ListThread", request).then(function (data) {
      if (data.limits) limits = data.limits;
      if (!token) lastSequence = Math.max(lastSequence, Number(data.lastSequence || 0));
      (data.comments || []).forEach(upsert);
      (data.heldComments || []).forEach(upsert);
      if (!token) {
        // Forget what can no longer be edited, unless it still waits for a moderator.
        var held = {};
        (data.heldComments || []).forEach(function (c) { held[c.id] = true; });
        Object.keys(own).forEach(function (id) {
          if (!held[id] && !editable(id)) delete own[id];
        });
        saveOwn();
      }
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
        adopt(data);
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
