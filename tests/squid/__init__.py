"""The squid tier: rawfetch through a real squid (Debian `squid`) on loopback.

Why a real proxy: the in-repo relay (tests/proxyserver.py) shows rawfetch speaks the
protocol; only a real caching proxy shows what a rack meets: absolute-form requests that
squid rewrites, Range forwarded or answered from cache, CONNECT with its access rules,
Basic authentication through a helper (basic_ncsa_auth), and collapsed forwarding that
lets one origin fetch serve a whole rack. Every test starts its own squid with a
generated config, logs and cache in a temp dir, and stops it by pid; tests are marked
`squid` and skip with the reason when squid is missing.
"""
