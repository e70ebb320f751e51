// Loaded after require.js and before html-manager's embed-amd.js, on pages with widgets
// (see book/_ext/offline_widgets.py). Served as _static/widgets-setup.js, beside the
// vendored files in _static/offline-js/.
(function () {
  // html-manager loads its icon fonts relative to the URL of its AMD module
  // "@jupyter-widgets/html-manager/dist/libembed-amd", which requirejs would resolve against
  // the page; map that module folder to the vendored folder, where the fonts are.
  var here = document.currentScript.src.replace(/\/[^/]*$/, "");
  window.require.config({ paths: { "@jupyter-widgets/html-manager/dist": here + "/offline-js" } });
  // html-manager typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue); the book
  // runs MathJax 3, so give MathJax a Hub that forwards to MathJax 3's typesetPromise. Added
  // once the deferred MathJax script has run, before html-manager renders on DOM ready.
  document.addEventListener("DOMContentLoaded", function () {
    if (window.MathJax && !window.MathJax.Hub) {
      window.MathJax.Hub = {
        Queue: function (job) {
          if (window.MathJax.typesetPromise && job && job[2]) {
            window.MathJax.typesetPromise([job[2]]);
          }
        },
      };
    }
  });
})();
