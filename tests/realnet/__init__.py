"""The real-world tier: real servers (nginx, http.server) and real kernel network faults
(ip netns + veth + iptables) around the real `rawfetch` command.

Why a separate tier: the in-repo fault server fakes faults at exact byte offsets, but only
a real TCP stack shows what users meet (a blackholed path, a RST from a middlebox, loss, a
dead address among several, a slow link). Every test here needs root, `ip`, `iptables` and
`nginx`; it skips with the reason otherwise. All names start with "rf<pid>x<n>" so that
concurrent runs never collide and stale leftovers of dead runs can be swept.
"""
