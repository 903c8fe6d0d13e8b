"""The embedded model's corpus: which CPython 3.11 standard-library files it trained on and which are held out.

The training script (scripts/train_tiny_model.py) and ``llama-aot eval --data heldout`` read the same split
from here, so a perplexity measured by eval is on text the model never saw in training.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

from runtime_stubs.errors import LlamaAotError

HELDOUT_EVERY = 10  # file index i (in STDLIB_FILES) is held out iff i % 10 == 9

# Pure-Python modules of CPython 3.11's Lib/, relative to the stdlib dir.
# Sorted; excludes platform-generated files (_sysconfigdata_*), modules that
# distributions split into optional packages (tkinter/turtle, idlelib,
# lib2to3, distutils, ensurepip, venv), generated tables (encodings) and tests.
STDLIB_FILES = (
    '__future__.py', '_aix_support.py', '_bootsubprocess.py', '_collections_abc.py',
    '_compat_pickle.py', '_compression.py', '_markupbase.py', '_osx_support.py',
    '_py_abc.py', '_pydecimal.py', '_pyio.py', '_sitebuiltins.py', '_strptime.py',
    '_threading_local.py', '_weakrefset.py', 'abc.py', 'aifc.py', 'argparse.py',
    'ast.py', 'asynchat.py', 'asyncio/__init__.py', 'asyncio/__main__.py',
    'asyncio/base_events.py', 'asyncio/base_futures.py', 'asyncio/base_subprocess.py',
    'asyncio/base_tasks.py', 'asyncio/constants.py', 'asyncio/coroutines.py',
    'asyncio/events.py', 'asyncio/exceptions.py', 'asyncio/format_helpers.py',
    'asyncio/futures.py', 'asyncio/locks.py', 'asyncio/log.py', 'asyncio/mixins.py',
    'asyncio/proactor_events.py', 'asyncio/protocols.py', 'asyncio/queues.py',
    'asyncio/runners.py', 'asyncio/selector_events.py', 'asyncio/sslproto.py',
    'asyncio/staggered.py', 'asyncio/streams.py', 'asyncio/subprocess.py',
    'asyncio/taskgroups.py', 'asyncio/tasks.py', 'asyncio/threads.py',
    'asyncio/timeouts.py', 'asyncio/transports.py', 'asyncio/trsock.py',
    'asyncio/unix_events.py', 'asyncio/windows_events.py', 'asyncio/windows_utils.py',
    'asyncore.py', 'base64.py', 'bdb.py', 'bisect.py', 'bz2.py', 'cProfile.py',
    'calendar.py', 'cgi.py', 'cgitb.py', 'chunk.py', 'cmd.py', 'code.py', 'codecs.py',
    'codeop.py', 'collections/__init__.py', 'collections/abc.py', 'colorsys.py',
    'compileall.py', 'concurrent/futures/__init__.py', 'concurrent/futures/_base.py',
    'concurrent/futures/process.py', 'concurrent/futures/thread.py', 'configparser.py',
    'contextlib.py', 'contextvars.py', 'copy.py', 'copyreg.py', 'crypt.py', 'csv.py',
    'dataclasses.py', 'datetime.py', 'decimal.py', 'difflib.py', 'dis.py',
    'doctest.py', 'email/__init__.py', 'email/_encoded_words.py',
    'email/_header_value_parser.py', 'email/_parseaddr.py', 'email/_policybase.py',
    'email/base64mime.py', 'email/charset.py', 'email/contentmanager.py',
    'email/encoders.py', 'email/errors.py', 'email/feedparser.py',
    'email/generator.py', 'email/header.py', 'email/headerregistry.py',
    'email/iterators.py', 'email/message.py', 'email/parser.py', 'email/policy.py',
    'email/quoprimime.py', 'email/utils.py', 'enum.py', 'filecmp.py', 'fileinput.py',
    'fnmatch.py', 'fractions.py', 'ftplib.py', 'functools.py', 'genericpath.py',
    'getopt.py', 'getpass.py', 'gettext.py', 'glob.py', 'graphlib.py', 'gzip.py',
    'hashlib.py', 'heapq.py', 'hmac.py', 'html/__init__.py', 'html/entities.py',
    'html/parser.py', 'http/__init__.py', 'http/client.py', 'http/cookiejar.py',
    'http/cookies.py', 'http/server.py', 'imaplib.py', 'imghdr.py', 'imp.py',
    'importlib/__init__.py', 'importlib/_abc.py', 'importlib/_bootstrap.py',
    'importlib/_bootstrap_external.py', 'importlib/abc.py', 'importlib/machinery.py',
    'importlib/readers.py', 'importlib/simple.py', 'importlib/util.py', 'inspect.py',
    'io.py', 'ipaddress.py', 'json/__init__.py', 'json/decoder.py', 'json/encoder.py',
    'json/scanner.py', 'json/tool.py', 'keyword.py', 'linecache.py', 'locale.py',
    'logging/__init__.py', 'logging/config.py', 'logging/handlers.py', 'lzma.py',
    'mailbox.py', 'mailcap.py', 'mimetypes.py', 'modulefinder.py',
    'multiprocessing/__init__.py', 'multiprocessing/connection.py',
    'multiprocessing/context.py', 'multiprocessing/forkserver.py',
    'multiprocessing/heap.py', 'multiprocessing/managers.py',
    'multiprocessing/pool.py', 'multiprocessing/popen_fork.py',
    'multiprocessing/popen_forkserver.py', 'multiprocessing/popen_spawn_posix.py',
    'multiprocessing/popen_spawn_win32.py', 'multiprocessing/process.py',
    'multiprocessing/queues.py', 'multiprocessing/reduction.py',
    'multiprocessing/resource_sharer.py', 'multiprocessing/resource_tracker.py',
    'multiprocessing/shared_memory.py', 'multiprocessing/sharedctypes.py',
    'multiprocessing/spawn.py', 'multiprocessing/synchronize.py',
    'multiprocessing/util.py', 'netrc.py', 'nntplib.py', 'ntpath.py', 'nturl2path.py',
    'numbers.py', 'opcode.py', 'operator.py', 'optparse.py', 'os.py', 'pathlib.py',
    'pdb.py', 'pickle.py', 'pickletools.py', 'pipes.py', 'pkgutil.py', 'platform.py',
    'plistlib.py', 'poplib.py', 'posixpath.py', 'pprint.py', 'profile.py', 'pstats.py',
    'pty.py', 'py_compile.py', 'pyclbr.py', 'pydoc.py', 'queue.py', 'quopri.py',
    'random.py', 're/__init__.py', 're/_casefix.py', 're/_compiler.py',
    're/_constants.py', 're/_parser.py', 'reprlib.py', 'rlcompleter.py', 'runpy.py',
    'sched.py', 'secrets.py', 'selectors.py', 'shelve.py', 'shlex.py', 'shutil.py',
    'signal.py', 'site.py', 'smtpd.py', 'smtplib.py', 'sndhdr.py', 'socket.py',
    'socketserver.py', 'sre_compile.py', 'sre_constants.py', 'sre_parse.py', 'ssl.py',
    'stat.py', 'statistics.py', 'string.py', 'stringprep.py', 'struct.py',
    'subprocess.py', 'sunau.py', 'symtable.py', 'sysconfig.py', 'tabnanny.py',
    'tarfile.py', 'telnetlib.py', 'tempfile.py', 'textwrap.py', 'threading.py',
    'timeit.py', 'token.py', 'tokenize.py', 'trace.py', 'traceback.py',
    'tracemalloc.py', 'tty.py', 'types.py', 'typing.py', 'unittest/__init__.py',
    'unittest/__main__.py', 'unittest/_log.py', 'unittest/async_case.py',
    'unittest/case.py', 'unittest/loader.py', 'unittest/main.py', 'unittest/mock.py',
    'unittest/result.py', 'unittest/runner.py', 'unittest/signals.py',
    'unittest/suite.py', 'unittest/util.py', 'urllib/__init__.py', 'urllib/error.py',
    'urllib/parse.py', 'urllib/request.py', 'urllib/response.py',
    'urllib/robotparser.py', 'uu.py', 'uuid.py', 'warnings.py', 'wave.py',
    'weakref.py', 'webbrowser.py', 'xdrlib.py', 'xml/etree/ElementInclude.py',
    'xml/etree/ElementPath.py', 'xml/etree/ElementTree.py', 'xml/etree/__init__.py',
    'xml/etree/cElementTree.py', 'zipapp.py', 'zipfile.py', 'zipimport.py',
)


def stdlib_dir() -> Path:
    """This interpreter's standard library: every CPython 3.11 install carries the corpus."""
    return Path(sysconfig.get_paths()["stdlib"])


def split_files(files=STDLIB_FILES):
    """(train, heldout) file name lists; every 10th file is held out."""
    train = [f for i, f in enumerate(files) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout = [f for i, f in enumerate(files) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return train, heldout


def read_sources(files, root: Path | None = None) -> list[str]:
    """Read stdlib sources; one LlamaAotError line if any is missing."""
    root = stdlib_dir() if root is None else root
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise LlamaAotError(
            f"{len(missing)} expected CPython 3.11 stdlib file(s) missing under {root}: "
            f"{', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else "")
            + "; run with a full CPython 3.11 install, or pass --data FILE"
        )
    return [(root / f).read_text(encoding="utf-8") for f in files]


def corpus_sha256(files, texts) -> str:
    h = hashlib.sha256()
    for f, t in zip(files, texts):
        h.update(f.encode() + b"\0" + t.encode("utf-8") + b"\0")
    return h.hexdigest()


def doc_windows(doc: list[int], seq_len: int):
    """Split one document into windows of <= seq_len+1 tokens overlapping by one
    token, so every token after the leading <bos> is predicted exactly once."""
    out = []
    for s in range(0, len(doc) - 1, seq_len):
        w = doc[s : s + seq_len + 1]
        if len(w) >= 2:
            out.append(w)
    return out
