/* The directory map (R-NET-2): progressive enhancement of the server-rendered list.
   Without this script, or when tiles cannot load, the list above still works. */
(function () {
  "use strict";
  var el = document.getElementById("directory-map");
  if (!el || typeof window.L === "undefined") { return; }
  var items = Array.prototype.slice.call(document.querySelectorAll(".directory-list [data-lat][data-lon]"));
  if (!items.length) { return; }
  el.hidden = false;
  var map = window.L.map(el, { scrollWheelZoom: false });
  window.L.tileLayer(el.getAttribute("data-tiles"), {
    maxZoom: 18, attribution: el.getAttribute("data-attribution")
  }).addTo(map);
  var bounds = [];
  items.forEach(function (item) {
    var lat = parseFloat(item.getAttribute("data-lat"));
    var lon = parseFloat(item.getAttribute("data-lon"));
    if (isNaN(lat) || isNaN(lon)) { return; }
    var name = item.getAttribute("data-name");
    var link = document.createElement("a");
    link.href = item.querySelector("a").href;
    link.textContent = name;
    window.L.marker([lat, lon], { title: name, alt: name, keyboard: true }).addTo(map).bindPopup(link);
    bounds.push([lat, lon]);
  });
  if (bounds.length) { map.fitBounds(bounds, { padding: [30, 30], maxZoom: 12 }); }
}());
