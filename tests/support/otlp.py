"""A real OTLP receiver on loopback, so a test can see the spans a process exported.

An in-memory exporter proves that spans are made; only a real collector proves that
they leave the process over OTLP, encoded as the protocol says, to the endpoint the
``OTEL_*`` environment names. The collector here is rotel (PyPI ``rotel``), a
collector in a wheel: its ``rotel-agent`` binary runs in the foreground as our child,
receives OTLP/HTTP (protobuf or JSON) on a free loopback port, and sends what it
received to its ``blackhole`` exporter.

To read the spans back, rotel runs this very file as its Python trace processor
(``--otlp-with-trace-processor``): rotel's embedded interpreter, the libpython 3.12 the
binary links to, imports it and calls ``process_spans`` with each batch it received,
which appends one JSON object per span to a file in the test's directory. Because
rotel imports this file, everything at module level here must stay standard library:
anything from the project is imported inside the functions that run in the test.

rotel is never left behind: it gets ``PR_SET_PDEATHSIG``, runs in its own process
group, and leaving the context terminates (then kills) that group and checks that no
process of it is left, whether the test passed or failed. rotel dying mid-test (its SDK
panics on an attribute whose value is absent, which no OpenTelemetry SDK sends) fails
``wait_for_spans`` and the block with rotel's output rather than a bare timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sysconfig
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

SPANS_FILE_ENV = "TRADEPLANE_OTLP_SPANS_FILE"
"""Where the processor inside rotel appends the spans it saw (one JSON object a line)."""

HOST = "127.0.0.1"
_START_ATTEMPTS = 3  # a free port can be taken between choosing it and rotel binding it
_SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUS_CODES = ("UNSET", "OK", "ERROR")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ReceivedLink(TypedDict):
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


class ReceivedEvent(TypedDict):
    name: str
    attributes: dict[str, Any]


class ReceivedSpan(TypedDict):
    """One span as rotel received it; ids are lowercase hex, as in ``traceparent``.

    Attribute values are JSON values: sequences become lists, maps dicts, bytes hex.
    ``kind`` and ``status_code`` are the names of ``opentelemetry.trace.SpanKind`` and
    ``StatusCode`` members (``"PRODUCER"``, ``"ERROR"``); ``parent_span_id`` is None for a
    root span.
    """

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str
    status_code: str
    status_message: str
    attributes: dict[str, Any]
    events: list[ReceivedEvent]
    links: list[ReceivedLink]
    service_name: str | None
    resource: dict[str, Any]
    scope: str


class ReceiverError(AssertionError):
    """rotel died, its processor failed, or the expected spans did not arrive in time."""


# -- inside rotel: the trace processor --------------------------------------------------

_write_lock = threading.Lock()


def process_spans(resource_spans: Any) -> None:
    """rotel's entry point for a trace processor: record the batch, change nothing.

    A failure is recorded too (as an ``error`` line) rather than raised, so the test
    reports it instead of waiting for spans that were dropped.
    """
    try:
        lines = [json.dumps(span) for span in _spans_of(resource_spans)]
    except Exception:
        lines = [json.dumps({"error": traceback.format_exc()})]
    _append(os.environ[SPANS_FILE_ENV], "".join(line + "\n" for line in lines))


def _append(path: str, text: str) -> None:
    """Append whole lines with O_APPEND under a lock, so batches never interleave."""
    data = text.encode()
    with _write_lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)


def _spans_of(resource_spans: Any) -> list[ReceivedSpan]:
    resource = resource_spans.resource
    resource_attributes = _attributes(resource.attributes) if resource is not None else {}
    service_name = resource_attributes.get("service.name")
    spans: list[ReceivedSpan] = []
    for scope_spans in resource_spans.scope_spans:
        scope = scope_spans.scope.name if scope_spans.scope is not None else ""
        for span in scope_spans.spans:
            status = span.status
            spans.append(ReceivedSpan(
                name=span.name,
                trace_id=bytes(span.trace_id).hex(),
                span_id=bytes(span.span_id).hex(),
                parent_span_id=bytes(span.parent_span_id).hex() or None,
                kind=_name(_SPAN_KINDS, span.kind),
                status_code=_name(_STATUS_CODES, status.code if status is not None else 0),
                status_message=status.message if status is not None else "",
                attributes=_attributes(span.attributes),
                events=[ReceivedEvent(name=event.name, attributes=_attributes(event.attributes))
                        for event in span.events],
                links=[ReceivedLink(trace_id=bytes(link.trace_id).hex(),
                                    span_id=bytes(link.span_id).hex(),
                                    attributes=_attributes(link.attributes))
                       for link in span.links],
                service_name=service_name if isinstance(service_name, str) else None,
                resource=resource_attributes,
                scope=scope,
            ))
    return spans


def _name(names: tuple[str, ...], code: Any) -> str:
    number = int(code)
    return names[number] if 0 <= number < len(names) else str(number)


def _attributes(key_values: Any) -> dict[str, Any]:
    return {key_value.key: _value(key_value.value) for key_value in key_values}


def _value(any_value: Any) -> Any:
    """An OTLP ``AnyValue`` (rotel's wrapper of it) as a JSON value."""
    if any_value is None:
        return None
    value = any_value.value
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, bytes | list):  # rotel hands a bytes value over as a list of ints
        return bytes(value).hex()
    if type(value).__name__ == "KeyValueList":
        return _attributes(value)
    return [_value(item) for item in value]  # ArrayValue


# -- in the test: starting rotel and reading back ---------------------------------------


@dataclass
class OtlpReceiver:
    """A running rotel; ``endpoint`` is its OTLP/HTTP base URL (protobuf or JSON)."""

    endpoint: str
    """``http://127.0.0.1:PORT``, for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (paths are appended)."""
    process: subprocess.Popen[bytes]
    directory: Path
    spans_file: Path

    @property
    def traces_endpoint(self) -> str:
        """The full traces URL, for ``OTLPSpanExporter(endpoint=...)``, which appends nothing."""
        return self.endpoint + "/v1/traces"

    def environ(self) -> dict[str, str]:
        """The ``OTEL_*`` variables that make an SDK export its spans here."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order (rotel may still be processing
        more: wait with ``wait_for_spans``)."""
        if not self.spans_file.exists():
            return []
        spans: list[ReceivedSpan] = []
        for line in self.spans_file.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # a batch still being written
            record = json.loads(line)
            if "error" in record:
                raise ReceiverError(f"rotel's span processor failed:\n{record['error']}")
            spans.append(record)
        return spans

    async def wait_for_spans(self, condition: int | Callable[[list[ReceivedSpan]], bool] = 1,
                             *, timeout: float = 5.0) -> list[ReceivedSpan]:
        """The spans received, once ``condition`` holds for them (an int: at least that many).

        Fails with what did arrive and rotel's output, if the deadline passes or rotel
        exits first: exporters report success as soon as rotel accepted the request, and
        the processor sees the batch a moment later.
        """
        def holds(spans: list[ReceivedSpan]) -> bool:
            return len(spans) >= condition if isinstance(condition, int) else condition(spans)

        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if holds(spans):
                return spans
            if self.process.poll() is not None:
                raise ReceiverError(f"rotel exited with {self.process.returncode} while "
                                    f"waiting for spans; received {_summary(spans)}\n"
                                    f"{self.output()}")
            if time.monotonic() > deadline:
                raise ReceiverError(f"the expected spans did not arrive within {timeout} s; "
                                    f"received {_summary(spans)}\n{self.output()}")
            await asyncio.sleep(0.02)

    def output(self) -> str:
        """rotel's stdout and stderr so far (colour codes removed), for error messages."""
        return _output(self.directory)


def _summary(spans: list[ReceivedSpan]) -> str:
    return f"{len(spans)}: {[span['name'] for span in spans]}"


@contextlib.asynccontextmanager
async def otlp_receiver(directory: Path, *, startup_timeout: float = 10.0,
                        extra_args: Sequence[str] = ()) -> AsyncIterator[OtlpReceiver]:
    """Run rotel on a free loopback port for the duration of the block.

    ``directory`` (a test's ``tmp_path``) gets a fresh subdirectory for rotel's output
    and the received spans. ``extra_args`` are more ``rotel-agent start`` flags. Startup
    has a deadline, and a failure to start raises ``StartError`` with rotel's output.
    """
    from tradeplane.processes import StartError

    binary = _rotel_binary()
    environment = _rotel_environment()
    directory.mkdir(parents=True, exist_ok=True)
    failure = ""
    for _attempt in range(_START_ATTEMPTS):
        workdir = Path(tempfile.mkdtemp(prefix="rotel-", dir=directory))
        spans_file = workdir / "spans.jsonl"
        port = _free_port()
        argv = [
            str(binary), "start",
            "--otlp-http-endpoint", f"{HOST}:{port}",
            # gRPC is served too, on an ephemeral port nobody uses (rotel 0.0.1-alpha10
            # panics when both endpoints ask for port 0, so HTTP's port is chosen here).
            "--otlp-grpc-endpoint", f"{HOST}:0",
            "--exporter", "blackhole",
            "--otlp-with-trace-processor", str(Path(__file__).resolve()),
            "--pid-file", str(workdir / "rotel.pid"),
            "--log-file", str(workdir / "rotel.log"),
            *extra_args,
        ]
        process = _spawn(argv, {**environment, SPANS_FILE_ENV: str(spans_file)}, workdir)
        receiver = OtlpReceiver(endpoint=f"http://{HOST}:{port}", process=process,
                                directory=workdir, spans_file=spans_file)
        try:
            ready = await _wait_ready(receiver, startup_timeout)
        except BaseException:
            _stop(process)
            raise
        if ready:
            break
        _stop(process)
        failure = receiver.output()
        if "Address already in use" not in failure:
            raise StartError(f"rotel did not start (exit code {process.returncode}):\n"
                             f"{failure}\n(rotel was run as: {' '.join(argv)})")
    else:
        raise StartError(f"rotel found no free port in {_START_ATTEMPTS} attempts:\n{failure}")

    try:
        yield receiver
    except BaseException:
        _stop(process)
        raise
    crashed = process.poll() is not None
    _stop(process)
    if crashed:
        raise ReceiverError(f"rotel exited with {process.returncode} before the test ended:\n"
                            f"{receiver.output()}")


def _rotel_binary() -> Path:
    from tradeplane.processes import StartError

    spec = importlib.util.find_spec("rotel")
    if spec is None or spec.origin is None:
        raise StartError("the OTLP receiver rotel is not installed: pip install rotel")
    binary = Path(spec.origin).parent / "rotel-agent"
    if not binary.exists():
        raise StartError(f"rotel is installed but has no agent binary at {binary}")
    return binary


def _rotel_environment() -> dict[str, str]:
    """Our environment, less anything rotel would read as configuration, plus libpython.

    rotel-agent links to ``libpython3.12.so`` (its processors are Python), which a pyenv
    or other non-system Python keeps in its own LIBDIR.
    """
    from tradeplane.processes import StartError

    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not soname \
            or not (Path(libdir) / soname).exists():
        raise StartError("rotel needs this Python's shared library (libpython3.12.so), and "
                         f"this Python has none in its LIBDIR ({libdir}): use a Python built "
                         "with --enable-shared")
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("ROTEL_", "OTEL_"))}
    inherited = environment.get("LD_LIBRARY_PATH")
    environment["LD_LIBRARY_PATH"] = f"{libdir}:{inherited}" if inherited else libdir
    environment["NO_COLOR"] = "1"
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    return environment


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _spawn(argv: list[str], environment: dict[str, str], workdir: Path
           ) -> subprocess.Popen[bytes]:
    """Start rotel in its own process group, dying with us; output to files in workdir.

    Call it from the event loop's thread: the parent-death signal follows the thread
    that started the child.
    """
    from tradeplane.processes import die_with_parent

    with open(workdir / "stdout.log", "wb") as stdout, \
            open(workdir / "stderr.log", "wb") as stderr:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                env=environment, cwd=workdir, start_new_session=True,
                                preexec_fn=die_with_parent)


async def _wait_ready(receiver: OtlpReceiver, timeout: float) -> bool:
    """True once rotel answers an (empty) OTLP/HTTP export; False if it exited first."""
    from tradeplane.processes import StartError

    deadline = time.monotonic() + timeout
    port = int(receiver.endpoint.rsplit(":", 1)[1])
    while True:
        if receiver.process.poll() is not None:
            return False
        if await _accepts_export(port):
            return True
        if time.monotonic() > deadline:
            raise StartError(f"rotel did not accept OTLP/HTTP on {receiver.endpoint} within "
                             f"{timeout} s:\n{receiver.output()}")
        await asyncio.sleep(0.02)


async def _accepts_export(port: int) -> bool:
    """Whether an empty ExportTraceServiceRequest (zero bytes) gets 200 from the port."""
    request = (f"POST /v1/traces HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
               "Content-Type: application/x-protobuf\r\nContent-Length: 0\r\n"
               "Connection: close\r\n\r\n").encode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 1.0)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return status_line.split(b" ")[1:2] == [b"200"]


def _stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate rotel's process group, kill it if it lingers, and check nothing is left.

    Synchronous on purpose: a cancelled test task cannot interrupt it half-way.
    """
    group = process.pid  # the session leader: its pid is the group id
    if process.poll() is None:
        _signal_group(group, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(group, signal.SIGKILL)
            process.wait(timeout)
    if _signal_group(group, 0):  # some other member of the group is still running
        _signal_group(group, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _signal_group(group, 0):
            if time.monotonic() > deadline:
                raise ReceiverError(f"processes of rotel's group {group} survived SIGKILL")
            time.sleep(0.02)


def _signal_group(group: int, signal_number: int) -> bool:
    """Send a signal to a process group; False when no process of it is left."""
    try:
        os.killpg(group, signal_number)
    except ProcessLookupError:
        return False
    return True


def _output(workdir: Path) -> str:
    parts = []
    for name in ("stdout.log", "stderr.log"):
        path = workdir / name
        text = path.read_text(errors="replace") if path.exists() else ""
        parts.append(f"--- rotel {name.split('.')[0]} ---\n{_ANSI.sub('', text)[-8000:]}")
    return "\n".join(parts)
