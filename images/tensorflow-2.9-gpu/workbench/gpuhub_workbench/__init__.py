"""gpuhub's additions to the student's Jupyter server (the TensorFlow user image and
every course image built on it):

- `targetpath`: which folders a git-pull link may write to (pure function);
- `gitpull`: the server extension that serves nbgitpuller's /git-pull through that check;
- `proxy`: what jupyter-server-proxy may proxy (TensorBoard and the GPU page, nothing else);
- `gpu_page`: the small page that says which GPU this server holds.
"""


def _jupyter_server_extension_points():
    return [{"module": "gpuhub_workbench.gitpull"}]
