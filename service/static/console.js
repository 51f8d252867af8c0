// Live parts of the console's pages: every element with data-live="URL" is replaced by what URL
// answers, again and again, until an answer carries X-Live-Done. The fragment routes hold each
// request open (the API's long polls) while nothing changes, so this is not a busy loop.
(function () {
  "use strict";
  function follow(element) {
    var url = element.getAttribute("data-live");
    var pause = parseInt(element.getAttribute("data-live-pause") || "500", 10);
    function again(delay) { window.setTimeout(fetchOnce, delay); }
    function fetchOnce() {
      fetch(url, {headers: {"X-Console-Live": "1"}, credentials: "same-origin", cache: "no-store"})
        .then(function (response) {
          var done = response.headers.get("X-Live-Done") === "1";
          return response.text().then(function (body) {
            if (response.ok) { element.innerHTML = body; }
            element.setAttribute("data-live-state", done ? "done" : "following");
            if (!done) { again(response.ok ? pause : 5000); }
          });
        })
        .catch(function () { again(5000); });
    }
    fetchOnce();
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(follow);
    document.querySelectorAll("[data-check-all]").forEach(function (box) {
      box.addEventListener("change", function () {
        document.querySelectorAll(box.getAttribute("data-check-all")).forEach(function (other) {
          other.checked = box.checked;
        });
      });
    });
  });
})();
