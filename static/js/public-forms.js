/*
 * Progressive enhancement for the public upload forms (application, status page).
 * The pages work fully without it. With it:
 *  - each chosen file is checked against the server's own limits (read from the
 *    form's data-* attributes) before anything is uploaded;
 *  - the upload shows a progress bar and the submit button is disabled while sending;
 *  - the page's error summary gets the focus.
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

  function showSummary(form, problems) {
    var main = document.getElementById("main");
    var summary = document.getElementById("error-summary");
    if (!summary) {
      summary = document.createElement("div");
      summary.id = "error-summary";
      summary.className = "error-summary";
      summary.setAttribute("role", "alert");
      summary.setAttribute("tabindex", "-1");
      form.parentNode.insertBefore(summary, form);
    }
    summary.textContent = "";
    var heading = document.createElement("h2");
    heading.id = "error-summary-title"; // the server's summary is labelled by it
    heading.textContent = form.dataset.messageSummary;
    var list = document.createElement("ul");
    problems.forEach(function (problem) {
      var item = document.createElement("li");
      var link = document.createElement("a");
      link.href = "#" + problem.input.id;
      link.textContent = problem.message;
      item.appendChild(link);
      list.appendChild(item);
    });
    summary.appendChild(heading);
    summary.appendChild(list);
    summary.focus();
    if (main && summary.scrollIntoView) { summary.scrollIntoView(); }
  }

  function setSending(form, sending) {
    var button = form.querySelector("button[type=submit]");
    var progress = form.querySelector(".upload-progress");
    if (button) {
      if (sending) {
        button.dataset.label = button.textContent;
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

  // The server answered with the form again (errors): show its page in place.
  function replacePage(html) {
    var next = new DOMParser().parseFromString(html, "text/html");
    var main = document.getElementById("main");
    var nextMain = next.getElementById("main");
    if (!main || !nextMain) {
      return false;
    }
    document.title = next.title;
    main.replaceWith(document.importNode(nextMain, true));
    enhance(document);
    return true;
  }

  // The request never carries the #fragment, so its responseURL never has one.
  function withoutFragment(url) {
    return url.split("#")[0];
  }

  function send(form) {
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
      // Not one of our pages (a proxy's 502 or 413, an outage page): keep what
      // the applicant typed and say that nothing was sent, as for a lost connection.
      if (!replacePage(request.responseText)) {
        failed();
      }
    });
    function failed() {
      setSending(form, false);
      showSummary(form, [{ input: form.querySelector("button[type=submit]") || form, message: form.dataset.messageFailed }]);
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
      send(form);
    });
  }

  function enhance(root) {
    Array.prototype.forEach.call(root.querySelectorAll("form[data-upload-form]"), enhanceForm);
    var summary = root.getElementById ? root.getElementById("error-summary") : null;
    if (summary) { summary.focus(); }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { enhance(document); });
  } else {
    enhance(document);
  }
})();
