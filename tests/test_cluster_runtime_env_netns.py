"""runtime_env across two network "hosts" (namespaces on a test bridge): a module that
exists only in the driver's temporary directory is imported by a worker of the other
host, from the package its daemon pulled over the bridge (issue 8 items 8 and 9).
Needs root and ``ip``; skipped with the reason otherwise."""

from __future__ import annotations

import json

import pytest

from actorcore.testing import netns_unavailable, run_driver_on_netns_hosts

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]

DRIVER = """
import json, os, sys, tempfile
import actorcore as ac
d = tempfile.mkdtemp()
with open(os.path.join(d, "netns_only_mod.py"), "w") as f:
    f.write("WHO = 'shipped'\\n")
ac.init(address=ADDRESS, runtime_env={"working_dir": d, "env_vars": {"HOSTVAR": "h"}})

@ac.remote(resources={"h1": 1})
def there():
    import netns_only_mod
    return [ac.get_runtime_context().get_node_id(), netns_only_mod.WHO,
            netns_only_mod.__file__.startswith(os.getcwd()), os.environ["HOSTVAR"]]

print(json.dumps(ac.get(there.remote(), timeout=90)))
ac.shutdown()
"""


def test_driver_code_reaches_a_namespaced_host():
    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    run, ids = run_driver_on_netns_hosts(2, DRIVER)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got == [ids[1], "shipped", True, "h"]
