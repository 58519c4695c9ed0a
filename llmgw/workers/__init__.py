"""``server.workers: N``: N gateway processes on one port, sharing one set of engines.

The top process of `llmgw up` becomes a supervisor (``supervisor.py``): it owns the
fleet (launches the engines as its children, scales, rolls and reloads them, exactly as
a single gateway does) and serves no request. It starts N workers (``worker.py``), each
a whole gateway that follows the supervisor's fleet through the ``Directory`` seam
(``fleet.sharing``) and listens on the port with SO_REUSEPORT. The supervisor restarts
a worker that dies; engines outlive any worker, since they are the supervisor's
children. Admin changes and reloads travel between them over Unix sockets (``hub.py``);
metrics merge through prometheus-client's multiprocess files
(``llmgw/metrics/multiprocess.py``). ``serving.py`` holds what every serving process
sets up alike, one worker or many.
"""
