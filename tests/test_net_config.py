"""The network config in etcd: `thingdoer up` writes flannel's default only when none exists,
and a node without one is told where to put it."""

from __future__ import annotations

import asyncio
import json

import pytest

from thingdoer.cluster.keys import FlannelKeys
from thingdoer.cluster.store import Store
from thingdoer.errors import Invalid, NotFound
from thingdoer.node.network import ensure_default_config, read_config

from .conftest import needs_etcd

pytestmark = [pytest.mark.etcd, needs_etcd]


def test_the_default_config_is_written_once_and_never_over_an_existing_one(etcd, prefix):
    flannel = f"{prefix}/coreos.com/network"

    async def scenario():
        async with Store(etcd.endpoint) as store:
            with pytest.raises(NotFound, match=f"no network config at {flannel}/config"):
                await read_config(store, flannel)
            assert await ensure_default_config(store, flannel) is True
            written = (await store.get(FlannelKeys(flannel).config())).value
            assert json.loads(written) == {"Network": "10.244.0.0/16", "SubnetLen": 24,
                                           "Backend": {"Type": "host-gw"}}
            config = await read_config(store, flannel)
            assert (str(config.network), config.subnet_len, config.backend) == ("10.244.0.0/16", 24, "host-gw")

            await store.put(FlannelKeys(flannel).config(), b'{"Network": "10.50.0.0/16", "Backend": {"Type": "vxlan"}}')
            assert await ensure_default_config(store, flannel) is False
            assert str((await read_config(store, flannel)).network) == "10.50.0.0/16"

            await store.put(FlannelKeys(flannel).config(), b'{"Network": "10.50.0.0/30"}')
            with pytest.raises(Invalid, match="too small"):
                await read_config(store, flannel)
    asyncio.run(scenario())
