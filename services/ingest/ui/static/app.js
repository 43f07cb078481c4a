// Hookstream dashboard: the only script. The Content Security Policy allows no inline
// script, so everything the pages do in the browser is here.
(function () {
  "use strict";

  // A page that waits for something (a queued retry, a delivery between attempts)
  // reloads itself, but never while the operator is typing into a form.
  var refresh = Number(document.body.dataset.refresh || 0);
  if (refresh > 0) {
    var tick = function () {
      var focused = document.activeElement;
      if (focused && /^(INPUT|TEXTAREA|SELECT)$/.test(focused.tagName)) {
        window.setTimeout(tick, refresh * 1000);
        return;
      }
      window.location.reload();
    };
    window.setTimeout(tick, refresh * 1000);
  }

  // One submit per form: a double click must not queue two retries or two replays.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset.submitted) {
      event.preventDefault();
      return;
    }
    form.dataset.submitted = "1";
  });
})();
