"""cgroups: the only code that reads or writes cgroupfs.

``fs`` does the file I/O and refuses paths outside cgroupfs; ``parse`` knows every file
format; ``resources`` maps pod limits to cgroup values (pure); ``driver`` is the one interface
(apply limits, read usage, count OOM kills, remove) that ``v2`` and ``v1`` implement.
"""
