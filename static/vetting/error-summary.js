/*
 * Gives the focus to a form's error summary (templates/admin/vetting/error_summary.html),
 * so the page is read from what went wrong. A file, not inline code: the admin's CSP
 * allows no inline script.
 */
(function () {
  "use strict";
  var summary = document.getElementById("error-summary");
  if (summary) {
    summary.focus();
  }
})();
