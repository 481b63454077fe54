"""A minimal espeak-ng binding: libespeak-ng via ctypes, or the `espeak-ng` program as fallback.

espeak-ng keeps one global engine per process (not thread-safe), so `engine()` returns a
per-process singleton; render in several processes for parallelism.
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
import io
import shutil
import subprocess
import threading

import numpy as np
import soundfile

DEFAULT_PITCH = 50
DEFAULT_RATE = 175

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _VoiceInfo(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    )


class LibraryEngine:
    """libespeak-ng from `espeakng_loader`, synchronous mode, int16 output at `sample_rate`.

    espeak-ng keeps synthesis state in C statics that `espeak_Terminate` does not reset (the
    pitch-flutter phase, gain control), and breath noise uses libc `rand()` and espeak's own
    clock-seeded generator, so the same text renders differently depending on what was rendered
    before and when. With `deterministic` (the default) each call maps a fresh copy of the
    library (dlopen ... dlclose, about 5 ms) and seeds both generators, so output depends only
    on (text, voice, pitch, rate); otherwise one instance is reused. (Another user of the same
    library in this process would keep it mapped: then only the seeding holds.)
    """

    def __init__(self, library_path: str, data_path: str, *, deterministic: bool = True) -> None:
        self.library_path = library_path
        self.data_path = data_path
        self.deterministic = deterministic
        self._lock = threading.Lock()
        self._resolved: dict[str, bytes] = {}
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer
        self._libc = ctypes.CDLL(None)
        self._lib: ctypes.CDLL | None = None
        lib = self._open()
        try:
            self._languages = _languages(lib)
        finally:
            self._close(lib)

    def _open(self) -> ctypes.CDLL:
        if self._lib is not None:
            return self._lib
        lib = ctypes.CDLL(self.library_path)
        _declare(lib)
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            _ctypes.dlclose(lib._handle)
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with data at {self.data_path}")
        self.sample_rate = rate
        lib.espeak_SetSynthCallback(self._callback)
        if not self.deterministic:
            self._lib = lib
        return lib

    def _close(self, lib: ctypes.CDLL) -> None:
        if self.deterministic:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)  # the next dlopen maps fresh statics

    def _collect(self, wav, n: int, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def _resolve(self, lib: ctypes.CDLL, name: str) -> bytes:
        """espeak-ng 1.52 no longer finds some language names ("en-gb+m7") by name: fall back to
        the voice file that lists that language. Leaves the voice selected."""
        if name in self._resolved:
            if lib.espeak_SetVoiceByName(self._resolved[name]) == 0:
                return self._resolved[name]
        base, _, variant = name.partition("+")
        candidates = [name.encode()]
        ident = self._languages.get(base.lower())
        if ident is not None:
            candidates.append(ident + (b"+" + variant.encode() if variant else b""))
        for cand in candidates:
            if lib.espeak_SetVoiceByName(cand) == 0:
                self._resolved[name] = cand
                return cand
        raise ValueError(f"espeak-ng has no voice {name!r}")

    def check_voice(self, name: str) -> None:
        """Raises ValueError if `name` is not a usable voice."""
        with self._lock:
            lib = self._open()
            try:
                self._resolve(lib, name)
            finally:
                self._close(lib)

    def synthesize(
        self, words: str, voice: str, *, pitch: int = DEFAULT_PITCH, rate: int = DEFAULT_RATE
    ) -> tuple[np.ndarray, int]:
        """int16 samples [n] and their rate for `words` spoken by `voice`."""
        with self._lock:
            lib = self._open()
            try:
                self._resolve(lib, voice)
                lib.espeak_SetParameter(_RATE, int(rate), 0)
                lib.espeak_SetParameter(_PITCH, int(pitch), 0)
                self._libc.srand(0)
                if hasattr(lib, "espeak_ng_SetRandSeed"):  # espeak-ng >= 1.52 seeds from the clock
                    lib.espeak_ng_SetRandSeed(0)
                self._chunks = []
                data = words.encode("utf-8") + b"\0"
                err = lib.espeak_Synth(
                    data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
                )
                chunks, self._chunks = self._chunks, []
            finally:
                self._close(lib)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) for {words[:40]!r}")
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return samples, self.sample_rate


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = (_CALLBACK,)
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = (ctypes.c_void_p,)
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceInfo))
    lib.espeak_Synth.argtypes = (
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    )
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Terminate.restype = ctypes.c_int
    if hasattr(lib, "espeak_ng_SetRandSeed"):
        lib.espeak_ng_SetRandSeed.argtypes = (ctypes.c_long,)
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int


def _languages(lib: ctypes.CDLL) -> dict[str, bytes]:
    """{language code: voice identifier} over the installed voices (first wins)."""
    out: dict[str, bytes] = {}
    voices = lib.espeak_ListVoices(None)
    i = 0
    while voices[i]:
        v = voices[i].contents
        # `languages` is (priority byte, NUL-terminated code)...; ctypes sees the first code.
        code = (v.languages or b"")[1:].decode(errors="replace").lower()
        out.setdefault(code, bytes(v.identifier))
        i += 1
    return out


class ProgramEngine:
    """The `espeak-ng` command-line program (only used when the library is unavailable)."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.sample_rate = 22_050

    def check_voice(self, name: str) -> None:
        self.synthesize("test", name)

    def synthesize(
        self, words: str, voice: str, *, pitch: int = DEFAULT_PITCH, rate: int = DEFAULT_RATE
    ) -> tuple[np.ndarray, int]:
        cmd = [self.program, "-v", voice, "-p", str(pitch), "-s", str(rate), "--stdout", words]
        out = subprocess.run(cmd, capture_output=True, check=True).stdout
        samples, sr = soundfile.read(io.BytesIO(out), dtype="int16")
        return samples.reshape(-1), sr


@functools.cache
def engine(*, deterministic: bool = True) -> LibraryEngine | ProgramEngine:
    """This process's espeak-ng engine (the library if it loads, else the program)."""
    try:
        import espeakng_loader

        return LibraryEngine(
            espeakng_loader.get_library_path(),
            espeakng_loader.get_data_path(),
            deterministic=deterministic,
        )
    except (ImportError, OSError, RuntimeError) as e:
        program = shutil.which("espeak-ng")
        if program is None:
            raise RuntimeError(
                "espeak-ng unavailable: install the 'espeakng-loader' package"
            ) from e
        return ProgramEngine(program)
