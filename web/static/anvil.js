/*
 * Anvil web UI: small comforts on top of plain forms. Every page works
 * without this file; it only
 *   - ticks every row with "select all" and counts the ticked rows of the
 *     machine list (bulk actions), disabling its buttons while none is;
 *   - asks before a form with `data-confirm` (on the form or the pressed
 *     button) is sent: power off, power cycle, PXE boot;
 *   - disables a `data-busy` form's submit button while it waits (an
 *     enrolment waits for the BMC) and shows its `data-busy-label`;
 *   - keeps a `<details data-keep-open>` open when htmx refreshes the card
 *     it is in.
 * Loaded from our own origin (the CSP allows no inline script).
 */
(function () {
  "use strict";

  function bulkForms(root) {
    var forms = [];
    if (root.matches && root.matches("form[data-bulk]")) forms.push(root);
    root.querySelectorAll("form[data-bulk]").forEach(function (f) { forms.push(f); });
    return forms;
  }

  function updateBulk(form) {
    var boxes = form.querySelectorAll("input[name='machine']");
    var ticked = form.querySelectorAll("input[name='machine']:checked").length;
    var all = form.querySelector("input[data-select-all]");
    if (all) {
      all.hidden = false;
      all.checked = boxes.length > 0 && ticked === boxes.length;
      all.indeterminate = ticked > 0 && ticked < boxes.length;
    }
    var count = form.querySelector("[data-bulk-count]");
    if (count) {
      count.textContent = ticked === 0
        ? "Tick machines to act on several at once"
        : ticked + (ticked === 1 ? " machine selected" : " machines selected");
      count.classList.toggle("active", ticked > 0);
    }
    form.querySelectorAll("[data-needs-selection]").forEach(function (b) {
      b.disabled = ticked === 0;
    });
  }

  function init(root) {
    bulkForms(root).forEach(updateBulk);
  }

  document.addEventListener("change", function (e) {
    var t = e.target;
    if (!(t instanceof HTMLInputElement) || !t.form || !t.form.matches("form[data-bulk]")) return;
    if (t.matches("[data-select-all]")) {
      t.form.querySelectorAll("input[name='machine']").forEach(function (b) { b.checked = t.checked; });
    }
    updateBulk(t.form);
  });

  document.addEventListener("submit", function (e) {
    var form = e.target;
    var button = e.submitter;
    var question = (button && button.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      e.preventDefault();
      return;
    }
    if (form.hasAttribute("data-busy")) {
      // After the submit has been taken: a disabled button would not be sent.
      window.setTimeout(function () {
        form.querySelectorAll("button[type='submit']").forEach(function (b) {
          b.disabled = true;
          var label = b.getAttribute("data-busy-label");
          if (label) {
            b.setAttribute("data-idle-label", b.textContent);
            b.textContent = label;
          }
        });
      }, 0);
    }
  });

  // A refreshed card comes back with its <details> closed: reopen those
  // that were open.
  var openBeforeSwap = [];
  document.addEventListener("htmx:beforeSwap", function (e) {
    var target = e.detail && e.detail.target;
    openBeforeSwap = [];
    if (!target || !target.querySelectorAll) return;
    target.querySelectorAll("details[data-keep-open][open]").forEach(function (d) {
      if (d.id) openBeforeSwap.push(d.id);
    });
  });
  document.addEventListener("htmx:afterSettle", function (e) {
    openBeforeSwap.forEach(function (id) {
      var d = document.getElementById(id);
      if (d) d.open = true;
    });
    openBeforeSwap = [];
    init(document);
  });

  // Back from the next page (bfcache): the busy button is usable again.
  window.addEventListener("pageshow", function () {
    document.querySelectorAll("form[data-busy] button[type='submit']").forEach(function (b) {
      b.disabled = false;
      var idle = b.getAttribute("data-idle-label");
      if (idle) b.textContent = idle;
    });
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { init(document); });
  } else {
    init(document);
  }
})();
