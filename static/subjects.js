// Live "Page 2" check mark of the Add Subject form (R-SUBJ-5); the server checks again.
(function () {
  var form = document.getElementById("subject-form");
  var status = document.getElementById("page2-status");
  var button = document.getElementById("add-subject");
  if (!form || !status || !button) { return; }
  function value(name) {
    var el = form.elements[name];
    if (!el) { return ""; }
    if (el.type === "checkbox") { return el.checked ? "y" : ""; }
    return (el.value || "").trim();
  }
  function complete() {
    var address = value("address") || value("homeless");
    var zip = /^59\d{3}(-\d{4})?$/.test(value("zip_code"));
    var contact = value("no_phone") ? value("other_contact") : value("phone");
    return !!(address && value("city") && value("county") && zip && contact);
  }
  function update() {
    var ok = complete();
    status.classList.toggle("is-done", ok);
    status.querySelector(".check").textContent = ok ? "\u2714" : "\u25CB";
    status.querySelector(".status-text").textContent = ok ? ": complete" : ": not complete";
    button.setAttribute("aria-disabled", ok ? "false" : "true");
    button.disabled = !ok;
  }
  form.addEventListener("input", update);
  form.addEventListener("change", update);
  update();
})();
