// gpuhub-session: the GPU session's time left in JupyterLab's status bar, and a warning
// (a JupyterLab notification) some minutes before the hub stops the server.
//
// Written by hand, not built: JupyterLab loads a "federated extension" as a script that
// registers a module-federation container in window._JUPYTERLAB (init + get). This one
// shares and needs no modules: it reads the page config (gpuhub_session.py puts
// GPUHUB_GPU_DEADLINE there), adds a plain element to the status bar, and warns through
// the documented `apputils:notify` command. So it needs no npm, no webpack, no jlpm.
(function () {
  'use strict';

  function config(name) {
    var el = document.getElementById('jupyter-config-data');
    try {
      return (el && JSON.parse(el.textContent || '{}')[name]) || '';
    } catch (e) {
      return '';
    }
  }

  function two(n) {
    return (n < 10 ? '0' : '') + n;
  }

  function left(seconds) {
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    return (h ? h + ':' + two(m) : m) + ':' + two(s);
  }

  var plugin = {
    id: 'gpuhub-session:countdown',
    description: 'Shows how long the GPU session has left.',
    autoStart: true,
    activate: function (app) {
      var deadline = Date.parse(config('gpuhubGpuDeadline'));
      if (isNaN(deadline)) {
        return; // no GPU, or no maximum age: nothing to count down
      }
      var warning = parseInt(config('gpuhubGpuWarning'), 10);
      warning = isNaN(warning) ? 600 : warning;
      var ends = new Date(deadline);
      var item = document.createElement('div');
      item.id = 'gpuhub-gpu-session';
      item.className = 'jp-StatusBar-Item jp-StatusBar-GroupItem gpuhub-gpu-session';
      item.style.padding = '0 6px';
      item.title = 'The hub stops this server, and frees its GPU, at ' + ends.toLocaleString() +
        '. Your files are kept.';
      var warned = false;

      function tick() {
        var seconds = Math.max(0, Math.round((deadline - Date.now()) / 1000));
        item.textContent = seconds > 0
          ? 'GPU session: ' + left(seconds) + ' left (ends ' + two(ends.getHours()) + ':' +
            two(ends.getMinutes()) + ')'
          : 'GPU session over: the hub stops this server';
        var late = seconds <= warning;
        item.style.color = late ? 'var(--jp-warn-color0, #c45500)' : '';
        item.style.fontWeight = late ? 'bold' : '';
        if (late && !warned && app.commands.hasCommand('apputils:notify')) {
          warned = true;
          app.commands.execute('apputils:notify', {
            message: 'Your GPU session ends in ' + Math.max(1, Math.round(seconds / 60)) +
              ' minute(s), at ' + two(ends.getHours()) + ':' + two(ends.getMinutes()) +
              '. Save your work: the hub then stops this server (your files are kept).',
            type: 'warning',
            options: { autoClose: false }
          });
        }
      }

      function place(attempt) {
        var bar = document.querySelector('#jp-main-statusbar .jp-StatusBar-Left');
        if (bar) {
          bar.appendChild(item);
        } else if (attempt < 50) {
          return setTimeout(function () { place(attempt + 1); }, 200);
        } else {
          // no status bar (hidden by the user): a corner of the page instead
          item.style.cssText += ';position:fixed;right:8px;bottom:8px;z-index:10000;' +
            'background:var(--jp-layout-color1,#fff)';
          document.body.appendChild(item);
        }
        tick();
        setInterval(tick, 1000);
      }

      app.restored.then(function () { place(0); });
    }
  };

  var containers = (window._JUPYTERLAB = window._JUPYTERLAB || {});
  containers['gpuhub-session'] = {
    init: function () {
      return Promise.resolve(); // shares no modules and needs none
    },
    get: function (module) {
      if (module !== './extension') {
        return Promise.reject(new Error('gpuhub-session has no module ' + module));
      }
      return Promise.resolve(function () {
        return { __esModule: true, default: plugin };
      });
    }
  };
})();
