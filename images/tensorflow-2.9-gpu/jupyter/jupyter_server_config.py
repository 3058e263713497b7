# The student's Jupyter server, for every user image and course image built on this one
# (installed as /etc/jupyter/jupyter_server_config.py). docs/students.md shows the result.
import gpuhub_workbench.proxy

c = get_config()  # noqa: F821

# TensorBoard and the "My GPU" page, through the student's own server and login; the
# generic /proxy/<port> and /proxy/<host>:<port> answer 403 (see gpuhub_workbench.proxy)
c.ServerProxy.servers = gpuhub_workbench.proxy.servers()
c.ServerProxy.host_allowlist = gpuhub_workbench.proxy.named_servers_only
gpuhub_workbench.proxy.install()

# memory and CPU against the container's limits (MEM_LIMIT and CPU_LIMIT, which the hub
# sets from the spawner's limits); amber from 90 % of the memory limit
c.ResourceUseDisplay.track_cpu_percent = True
c.ResourceUseDisplay.mem_warning_threshold = 0.1

# nothing a student needs goes online at start-up: no Jupyter news feed, no update
# check, no extension manager asking PyPI (students cannot install lab extensions anyway)
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
c.LabApp.extension_manager = "readonly"
