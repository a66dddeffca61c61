/*
 * Progressive enhancement for the public upload forms (application, status page).
 * The pages work fully without it. With it:
 *  - each chosen file is checked against the server's own limits (read from the
 *    form's data-* attributes) before anything is uploaded;
 *  - the upload shows a progress bar and the submit button is disabled while sending;
 *  - the page's error summary gets the focus, and its links show the whole question;
 *  - the answer replaces the page only when it is the form again (errors to correct);
 *    any other answer (429, 403, 500, maintenance) keeps the form as it is and shows
 *    what the answer says in the error summary;
 *  - a CSRF refusal (the cookie was lost) is met by fetching the form's page for a fresh
 *    cookie and token and sending once more, keeping everything typed and chosen.
 * No framework, no inline code: loaded as a static file (strict CSP).
 */
(function () {
  "use strict";

  function format(template, values) {
    return template.replace(/\{(\w+)\}/g, function (match, key) {
      return Object.prototype.hasOwnProperty.call(values, key) ? values[key] : match;
    });
  }

  function extensionOf(name) {
    var dot = name.lastIndexOf(".");
    return dot < 0 ? "" : name.slice(dot + 1).toLowerCase();
  }

  function fileProblem(form, file) {
    var data = form.dataset;
    var allowed = data.extensions.split(",");
    if (allowed.indexOf(extensionOf(file.name)) < 0) {
      return format(data.messageType, { name: file.name });
    }
    if (file.size === 0) {
      return format(data.messageEmpty, { name: file.name });
    }
    if (file.size > Number(data.maxSize)) {
      return format(data.messageSize, { name: file.name });
    }
    return "";
  }

  function describedBy(input, id, add) {
    var ids = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
    ids = ids.filter(function (value) { return value !== id; });
    if (add) { ids.push(id); }
    if (ids.length) {
      input.setAttribute("aria-describedby", ids.join(" "));
    } else {
      input.removeAttribute("aria-describedby");
    }
  }

  // Shows or clears the message under one file input; returns the message.
  function checkInput(form, input) {
    var message = input.files && input.files.length ? fileProblem(form, input.files[0]) : "";
    var box = document.getElementById(input.id + "_client_error");
    if (box) {
      box.textContent = message;
      box.hidden = !message;
      describedBy(input, box.id, Boolean(message));
    }
    if (message) {
      input.setAttribute("aria-invalid", "true");
    } else if (!input.closest(".field-error")) {
      input.removeAttribute("aria-invalid");
    }
    return message;
  }

  // Like the server's page: the title says there is an error, for screen reader users first of all.
  function markTitleAsError(form) {
    var prefix = form.dataset.messageErrorTitle || "Error:";
    if (document.title.indexOf(prefix) !== 0) {
      document.title = prefix + " " + document.title;
    }
  }

  // The summary above the form, emptied, with its heading; the caller adds the rest.
  function emptySummary(form, title) {
    var summary = document.getElementById("error-summary");
    if (!summary) {
      summary = document.createElement("div");
      summary.id = "error-summary";
      summary.className = "error-summary";
      summary.setAttribute("role", "alert");
      summary.setAttribute("tabindex", "-1");
      summary.setAttribute("aria-labelledby", "error-summary-title");
      form.parentNode.insertBefore(summary, form);
    }
    summary.textContent = "";
    var heading = document.createElement("h2");
    heading.id = "error-summary-title"; // the server's summary is labelled by it
    heading.textContent = title;
    summary.appendChild(heading);
    return summary;
  }

  function focusSummary(form, summary) {
    markTitleAsError(form);
    summary.focus();
    if (summary.scrollIntoView) { summary.scrollIntoView(); }
  }

  function showSummary(form, problems) {
    var summary = emptySummary(form, form.dataset.messageSummary);
    var list = document.createElement("ul");
    problems.forEach(function (problem) {
      var item = document.createElement("li");
      var link = document.createElement("a");
      link.href = "#" + problem.input.id;
      link.textContent = problem.message;
      item.appendChild(link);
      list.appendChild(item);
    });
    summary.appendChild(list);
    focusSummary(form, summary);
  }

  // A reply that is not the form to correct (429, 403, 500, maintenance): say what it says.
  function showMessage(form, title, lines) {
    var summary = emptySummary(form, title);
    lines.forEach(function (line) {
      var paragraph = document.createElement("p");
      paragraph.textContent = line;
      summary.appendChild(paragraph);
    });
    focusSummary(form, summary);
  }

  function setSending(form, sending) {
    var button = form.querySelector("button[type=submit]");
    var progress = form.querySelector(".upload-progress");
    if (button) {
      if (sending) {
        // Sending again after a CSRF refusal: the label is already "Sending…".
        if (!button.disabled) { button.dataset.label = button.textContent; }
        button.textContent = form.dataset.messageSending;
      } else if (button.dataset.label) {
        button.textContent = button.dataset.label;
      }
      button.disabled = sending;
      button.setAttribute("aria-disabled", sending ? "true" : "false");
    }
    if (progress) { progress.hidden = !sending; }
  }

  function showProgress(form, percent) {
    var bar = form.querySelector(".upload-progress progress");
    var text = form.querySelector("[data-progress-text]");
    if (bar) { bar.value = percent; }
    // The text is announced (aria-live): change it in steps of ten, not on every event.
    var step = String(Math.floor(percent / 10));
    if (text && form.dataset.progressStep !== step) {
      form.dataset.progressStep = step;
      text.textContent = format(form.dataset.messageProgress, { percent: step * 10 });
    }
  }

  // Five empty file slots make a long form on a phone: show one, and a button for the next.
  function revealSlotsOnDemand(form) {
    var slots = Array.prototype.slice.call(form.querySelectorAll(".evidence-slot"));
    if (slots.length < 2) { return; }
    function isUsed(slot) {
      var file = slot.querySelector("input[type=file]");
      var note = slot.querySelector("input[type=text], textarea");
      return (file && file.files && file.files.length) || (note && note.value) || slot.querySelector(".field-error");
    }
    var lastUsed = -1;
    slots.forEach(function (slot, index) { if (isUsed(slot)) { lastUsed = index; } });
    var shown = Math.max(lastUsed + 1, 1);
    if (shown >= slots.length) { return; }
    slots.forEach(function (slot, index) { slot.hidden = index >= shown; });
    var button = document.createElement("button");
    button.type = "button";
    button.className = "button-secondary";
    button.textContent = form.dataset.messageAddFile;
    button.addEventListener("click", function () {
      var next = slots[shown];
      next.hidden = false;
      shown += 1;
      if (shown >= slots.length) { button.remove(); }
      next.querySelector("input[type=file]").focus();
    });
    slots[slots.length - 1].parentNode.insertBefore(button, slots[slots.length - 1].nextSibling);
  }

  function textOf(node) {
    return node ? node.textContent.replace(/\s+/g, " ").trim() : "";
  }

  // The server answered with the form again (errors to correct): show its page in place.
  function replacePage(next, nextMain) {
    document.title = next.title;
    var main = document.importNode(nextMain, true);
    document.getElementById("main").replaceWith(main);
    enhance(document);
    if (!document.getElementById("error-summary")) {
      var heading = main.querySelector("h1");
      if (heading) {
        heading.setAttribute("tabindex", "-1");
        heading.focus();
      }
    }
  }

  // Any other answer leaves the form as it is, with everything typed and chosen, and
  // shows the answer's own words above it: its error summary (the form came back with
  // a 503: storage failed), else its heading and first paragraph (our 429, 400, 500 and
  // maintenance pages). Returns false for a page that is none of ours.
  function showReply(form, nextMain) {
    var summary = nextMain.querySelector("#error-summary");
    if (summary) {
      var lines = Array.prototype.map.call(summary.querySelectorAll("li, p"), textOf).filter(Boolean);
      showMessage(form, textOf(summary.querySelector("h2")) || form.dataset.messageSummary, lines);
      return true;
    }
    var heading = textOf(nextMain.querySelector("h1"));
    if (!heading) { return false; }
    var paragraph = textOf(nextMain.querySelector("p"));
    showMessage(form, heading, paragraph ? [paragraph] : []);
    return true;
  }

  // A CSRF refusal that sending again did not cure (the browser blocks cookies): all that
  // our page says, its link to the form included.
  function showWholeReply(form, nextMain) {
    setSending(form, false);
    var summary = emptySummary(form, textOf(nextMain.querySelector("h1")));
    Array.prototype.forEach.call(nextMain.querySelectorAll("p"), function (paragraph) {
      summary.appendChild(document.importNode(paragraph, true));
    });
    focusSummary(form, summary);
  }

  // Our CSRF refusal (templates/403_csrf.html): the cookie was lost (a restarted browser,
  // a page open for long), so pressing send again would be refused again, and reloading
  // would lose what was typed and chosen. The form's own page sets a new cookie and carries
  // a token that matches it: put that token in and send once more.
  function sendWithFreshToken(form, target, refusal) {
    var request = new XMLHttpRequest();
    request.open("GET", target);
    request.addEventListener("load", function () {
      var page = new DOMParser().parseFromString(request.responseText || "", "text/html");
      var fresh = page.querySelector("form[data-upload-form] input[name=csrfmiddlewaretoken]");
      var token = form.querySelector("input[name=csrfmiddlewaretoken]");
      if (request.status === 200 && fresh && token) {
        token.value = fresh.value;
        send(form, true);
      } else {
        showWholeReply(form, refusal);
      }
    });
    request.addEventListener("error", function () { showWholeReply(form, refusal); });
    request.send();
  }

  // The request never carries the #fragment, so its responseURL never has one.
  function withoutFragment(url) {
    return url.split("#")[0];
  }

  // `retried`: this is the one new try after a CSRF refusal.
  function send(form, retried) {
    var request = new XMLHttpRequest();
    var target = withoutFragment(form.action);
    request.open("POST", target);
    request.upload.addEventListener("progress", function (event) {
      if (event.lengthComputable) {
        showProgress(form, Math.floor((event.loaded / event.total) * 100));
      }
    });
    request.addEventListener("load", function () {
      // A redirect (success) was followed: go where it led.
      if (request.responseURL && request.responseURL !== target) {
        window.location.assign(request.responseURL);
        return;
      }
      var next = new DOMParser().parseFromString(request.responseText || "", "text/html");
      var nextMain = next.getElementById("main");
      if (request.status === 200 && nextMain) {
        if (nextMain.querySelector("form[data-upload-form]")) {
          replacePage(next, nextMain);
        } else {
          // A redirect back to this same address (the status page after staff moved
          // the application on): show that page, as the post without the script would.
          window.location.assign(request.responseURL || target);
        }
        return;
      }
      if (request.status === 403 && nextMain && nextMain.querySelector("[data-csrf-failure]")) {
        if (retried) {
          showWholeReply(form, nextMain);
        } else {
          sendWithFreshToken(form, target, nextMain);
        }
        return;
      }
      setSending(form, false);
      // Not one of our pages (a proxy's 502 or 413): say that nothing was sent,
      // as for a lost connection.
      if (!nextMain || !showReply(form, nextMain)) {
        failed();
      }
    });
    function failed() {
      setSending(form, false);
      var button = form.querySelector("button[type=submit]");
      // The summary's link leads to the button, to send again: it needs an id to point at.
      if (button && !button.id) { button.id = "send-again"; }
      showSummary(form, [{ input: button || form, message: form.dataset.messageFailed }]);
    }
    request.addEventListener("error", failed);
    setSending(form, true);
    showProgress(form, 0);
    request.send(new FormData(form));
  }

  function enhanceForm(form) {
    if (form.dataset.enhanced) { return; }
    form.dataset.enhanced = "true";
    revealSlotsOnDemand(form);
    var inputs = Array.prototype.slice.call(form.querySelectorAll("input[type=file]"));
    inputs.forEach(function (input) {
      input.addEventListener("change", function () { checkInput(form, input); });
    });
    form.addEventListener("submit", function (event) {
      if (!window.FormData || !window.XMLHttpRequest || !window.DOMParser) {
        return; // An old browser: the ordinary form post still works.
      }
      event.preventDefault();
      var problems = [];
      inputs.forEach(function (input) {
        var message = checkInput(form, input);
        if (message) { problems.push({ input: input, message: message }); }
      });
      if (problems.length) {
        showSummary(form, problems);
        return;
      }
      send(form, false);
    });
  }

  // The browser's own jump would put the input at the very top, its label and hint
  // out of view, and leave the focus on the link: show the whole question, focus the input.
  function followSummaryLink(event) {
    var link = event.target.closest ? event.target.closest(".error-summary a[href^='#']") : null;
    var input = link ? document.getElementById(link.getAttribute("href").slice(1)) : null;
    if (!input) { return; }
    event.preventDefault();
    (input.closest(".field") || input).scrollIntoView();
    input.focus({ preventScroll: true });
  }

  function enhance(root) {
    Array.prototype.forEach.call(root.querySelectorAll("form[data-upload-form]"), enhanceForm);
    var summary = root.getElementById ? root.getElementById("error-summary") : null;
    if (summary) { summary.focus(); }
  }

  document.addEventListener("click", followSummaryLink);
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { enhance(document); });
  } else {
    enhance(document);
  }
})();
