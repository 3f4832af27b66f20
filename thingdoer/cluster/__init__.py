"""The control plane: the etcd store and key layout, the scheduler, the reaper.

Nothing here changes the host: it only reads and writes etcd.
"""
