"""Pod networking, the host side: flannel-compatible subnet maths and formats (``subnets``, pure),
pod address bookkeeping (``ipam``), netlink (``netlink``, the only pyroute2 importer) and the
masquerade table (``nft``, the only module that runs ``nft``). ``node/network.py`` drives them."""
