"""Real web servers started from generated configs on ephemeral loopback ports.

Why: rawfetch's resume judgement must hold against what deployments run -- Debian's
apache2 2.4, nginx, lighttpd 1.4, caddy 2 and Python's http.server -- each with its own
validator style, 416 form, compression module and stat cache. Every server gets the same
document root layout, configured the way an operator would:

  /files/...    plain static files; compression enabled for them (identity when asked)
  /noetag/...   the server's ETag switched off (Last-Modified only)
  /forced/...   a Content-Encoding forced whatever Accept-Encoding says
  /gz/...       *.gz files served with Content-Encoding: gzip (Apache's AddEncoding)
  /secret/...   403;   /old/<cell> -> 302 /files/<cell>/img;   /dir/ a directory listing

Each is started in its own session and stopped by its own pid (then its process group).
"""
from __future__ import annotations

import gzip
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import FrozenSet, List, Optional

START_TIMEOUT = 10.0   # s: a server not accepting by then failed to start
STOP_TIMEOUT = 5.0     # s: graceful stop, then SIGKILL of its process group
PREFIXES = ("files", "noetag", "forced", "gz", "secret", "dir")

# What each server can be configured to do here (http.server has no configuration).
FULL = frozenset(["range", "noetag", "forced", "gz", "forbid", "redirect", "listing", "gzip"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:   # cleanup: not listening yet
        return False


class Daemon:
    """One server: `conf()` renders its config; start() waits until it accepts."""

    name = ""
    binary = ""
    features: FrozenSet[str] = FULL

    def __init__(self, root: str) -> None:
        self.root = root                                   # the document root
        self.dir = tempfile.mkdtemp(prefix="servers-%s-" % self.name)
        os.chmod(self.dir, 0o755)
        self.port = 0
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    def available(self) -> Optional[str]:
        """Why this server cannot run here, or None."""
        if shutil.which(self.binary) is None and not os.path.exists(self.binary):
            return "%s is not installed (apt-get install %s)" % (self.binary, self.name)
        return None

    def conf(self) -> str:
        raise NotImplementedError

    def command(self, conf_path: str) -> List[str]:
        raise NotImplementedError

    def start(self) -> "Daemon":
        for _ in range(5):   # the port may be taken between free_port() and bind
            self.port = free_port()
            conf_path = os.path.join(self.dir, "server.conf")
            with open(conf_path, "w") as handle:
                handle.write(self.conf())
            log = open(os.path.join(self.dir, "stderr.log"), "ab")
            self.proc = subprocess.Popen(self.command(conf_path), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, cwd=self.dir,
                                         env=dict(os.environ, XDG_CONFIG_HOME=self.dir,
                                                  XDG_DATA_HOME=self.dir, HOME=self.dir),
                                         start_new_session=True)
            log.close()
            end = time.monotonic() + START_TIMEOUT
            while time.monotonic() < end and self.proc.poll() is None:
                if accepts(self.port):
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError("%s did not start: %s" % (self.name, self.log_tail()))

    def log_tail(self) -> str:
        text = ""
        for name in ("stderr.log", "error.log"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as handle:
                    text += handle.read()[-1500:]
            except OSError:   # cleanup: the log may not exist
                pass
        return text

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):   # cleanup: already gone
            pass
        proc.wait(STOP_TIMEOUT)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # How /forced/<cell>/img is made to come out gzip-encoded (the body = gzip(plain)).
    def place_forced(self, directory: str, plain: bytes) -> None:
        """Default: the gzip bytes at the path, the header added by config."""
        write(os.path.join(directory, "img"), gzip.compress(plain, mtime=0))


def write(path: str, data: bytes, mtime: Optional[float] = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as handle:
        handle.write(data)
    os.chmod(path + ".tmp", 0o644)
    if mtime is not None:
        os.utime(path + ".tmp", (mtime, mtime))
    os.replace(path + ".tmp", path)


APACHE_MODULES = ("mpm_event", "authz_core", "dir", "autoindex", "mime", "deflate", "filter",
                  "alias", "env", "headers")
APACHE_CONF = """\
ServerRoot "{dir}"
DefaultRuntimeDir "{dir}"
PidFile "{dir}/httpd.pid"
Listen 127.0.0.1:{port}
ServerName 127.0.0.1
{modules}
User www-data
Group www-data
ErrorLog "{dir}/error.log"
LogLevel warn
TypesConfig /dev/null
DocumentRoot "{root}"
<Directory />
    Require all denied
</Directory>
<Directory "{root}">
    Options Indexes
    AllowOverride None
    Require all granted
</Directory>
<FilesMatch "^img$">
    ForceType application/octet-stream
</FilesMatch>
AddOutputFilterByType DEFLATE application/octet-stream
<Directory "{root}/noetag">
    FileETag None
</Directory>
<Directory "{root}/forced">
    SetEnv force-gzip 1
    SetOutputFilter DEFLATE
</Directory>
<Directory "{root}/gz">
    AddEncoding gzip .gz
</Directory>
<Directory "{root}/secret">
    Require all denied
</Directory>
RedirectMatch 302 ^/old/(.*)$ /files/$1/img
"""


class Apache(Daemon):
    name = "apache2"
    binary = "apache2"

    def conf(self) -> str:
        modules = "\n".join("LoadModule %s_module /usr/lib/apache2/modules/mod_%s.so"
                            % (m, m) for m in APACHE_MODULES)
        return APACHE_CONF.format(dir=self.dir, port=self.port, root=self.root,
                                  modules=modules)

    def command(self, conf_path: str) -> List[str]:
        return ["apache2", "-f", conf_path, "-DFOREGROUND"]

    def place_forced(self, directory: str, plain: bytes) -> None:
        """mod_deflate with force-gzip compresses the plain file on the fly."""
        write(os.path.join(directory, "img"), plain)


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    sendfile on;
    default_type application/octet-stream;
    types {{ }}
    gzip on;
    gzip_types *;
    absolute_redirect off;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /noetag/ {{ etag off; }}
        location /forced/ {{ gzip_static always; }}
        location /gz/ {{ add_header Content-Encoding gzip; gzip off; }}
        location /secret/ {{ deny all; }}
        location /dir/ {{ autoindex on; }}
        location ~ ^/old/(.*)$ {{ return 302 /files/$1/img; }}
    }}
}}
"""


class Nginx(Daemon):
    name = "nginx"
    binary = "nginx"

    def conf(self) -> str:
        return NGINX_CONF.format(dir=self.dir, port=self.port, root=self.root)

    def command(self, conf_path: str) -> List[str]:
        return ["nginx", "-c", conf_path, "-p", self.dir]

    def place_forced(self, directory: str, plain: bytes) -> None:
        """gzip_static always: img.gz beside img is sent, encoded, to every client."""
        write(os.path.join(directory, "img"), plain)
        write(os.path.join(directory, "img.gz"), gzip.compress(plain, mtime=0))


LIGHTTPD_CONF = """\
server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {port}
server.pid-file = "{dir}/lighttpd.pid"
server.errorlog = "{dir}/error.log"
server.modules = ("mod_access", "mod_redirect", "mod_setenv", "mod_deflate",
                  "mod_dirlisting", "mod_staticfile")
mimetype.assign = ("" => "application/octet-stream")
deflate.mimetypes = ("application/octet-stream")
deflate.allowed-encodings = ("gzip")
url.redirect = ("^/old/(.*)$" => "/files/$1/img")
url.redirect-code = 302
$HTTP["url"] =~ "^/noetag/" {{ static-file.etags = "disable" }}
$HTTP["url"] =~ "^/(forced|gz)/" {{
    setenv.set-response-header = ("Content-Encoding" => "gzip")
    deflate.mimetypes = ()
}}
$HTTP["url"] =~ "^/secret/" {{ url.access-deny = ("") }}
$HTTP["url"] =~ "^/dir/" {{ dir-listing.activate = "enable" }}
"""


class Lighttpd(Daemon):
    name = "lighttpd"
    binary = "lighttpd"

    def conf(self) -> str:
        return LIGHTTPD_CONF.format(dir=self.dir, port=self.port, root=self.root)

    def command(self, conf_path: str) -> List[str]:
        return ["lighttpd", "-D", "-f", conf_path]


CADDY_CONF = """\
{{
    admin off
    auto_https off
}}
http://127.0.0.1:{port} {{
    root * {root}
    encode gzip
    header /noetag/* -ETag
    header /forced/* Content-Encoding gzip
    header /gz/* Content-Encoding gzip
    respond /secret/* 403
    redir /old/* /files/{{http.request.uri.path.1}}/img 302
    file_server /dir/* browse
    file_server
}}
"""


class Caddy(Daemon):
    name = "caddy"
    binary = "caddy"

    def conf(self) -> str:
        return CADDY_CONF.format(dir=self.dir, port=self.port, root=self.root)

    def command(self, conf_path: str) -> List[str]:
        return ["caddy", "run", "--config", conf_path, "--adapter", "caddyfile"]


class PyHttp(Daemon):
    """`python3 -m http.server`: HTTP/1.0, Last-Modified only, ignores Range, lists dirs."""
    name = "http.server"
    binary = sys.executable
    features = frozenset(["listing"])

    def conf(self) -> str:
        return ""

    def command(self, conf_path: str) -> List[str]:
        return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                "--directory", self.root, str(self.port)]


SERVERS = {cls.name: cls for cls in (Apache, Nginx, Lighttpd, Caddy, PyHttp)}
