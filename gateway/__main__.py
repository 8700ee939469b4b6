"""``python -m gateway``: the hagw command.

A demo node and the demo's deploy action (``node``, ``demo-redeploy``) are started many
times over (by the demo, by every deploy of it, by the tests) and run on little: they are
dispatched before the rest of the CLI is imported, which takes longer than they need to
start. ``hagw node`` through the installed script is the same command.
"""

import sys

if sys.argv[1:2] == ["node"]:
    from gateway.app.demo.backend import node_main

    sys.exit(node_main(sys.argv[2:]))
elif sys.argv[1:2] == ["demo-redeploy"]:
    from gateway.app.demo.redeploy import main as redeploy_main

    sys.exit(redeploy_main(sys.argv[2:]))
else:
    from gateway.app.cli import main

    main()
