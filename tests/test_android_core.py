"""The Kotlin core of the Android demo (android_demo/core): compiled with kotlinc and its JUnit tests run on the JVM.

The JUnit tests compare the Kotlin tokenizer, samplers, seeded noise, sampling loop and pixel conversion with the
golden vectors the Python library writes (tests/test_golden.py keeps those in step with the library). The Gradle
build needs Google's Maven repository; this test needs only Debian's ``kotlin`` and ``junit4`` packages, which
``.ci/run`` installs.

kotlinc is slow (about a minute here), so the compiled jar is cached in the temporary directory under a hash of
the sources, the resources and the compiler version: the second backend's run and unchanged re-runs reuse it.
The tests themselves run every time.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "android_demo" / "core"
MERGES = REPO / "sd_keras" / "assets" / "bpe_simple_vocab_16e6.txt.gz"
JAVA_LIBRARIES = Path("/usr/share/java")


def _find_jar(*names):
    for name in names:
        path = JAVA_LIBRARIES / name
        if path.is_file():
            return path
    raise AssertionError(f"none of {', '.join(names)} in {JAVA_LIBRARIES}; install Debian's junit4 package")


def _tool(name):
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed; install Debian's kotlin and junit4 packages (see .ci/run)")
    return path


def _sources(kind):
    return sorted((CORE / "src" / kind / "kotlin").rglob("*.kt"))


def _test_classes():
    names = []
    for path in _sources("test"):
        text = path.read_text(encoding="utf-8")
        package = re.search(r"^package\s+([\w.]+)", text, re.M).group(1)
        for match in re.finditer(r"^class\s+(\w+Test)\b", text, re.M):
            names.append(f"{package}.{match.group(1)}")
    return names


@pytest.fixture(scope="session")
def core_jar():
    """The core and its tests compiled into one jar (with the Kotlin runtime), cached by content hash."""
    kotlinc = _tool("kotlinc")
    junit = _find_jar("junit4.jar", "junit.jar")
    hamcrest = _find_jar("hamcrest-core.jar", "hamcrest.jar", "hamcrest-all.jar")
    version = subprocess.run([kotlinc, "-version"], capture_output=True, text=True).stderr.strip()
    digest = hashlib.sha256(version.encode())
    for path in _sources("main") + _sources("test"):
        digest.update(str(path.relative_to(CORE)).encode())
        digest.update(path.read_bytes())
    cache = Path(tempfile.gettempdir()) / "sd_keras_android_core"
    jar = cache / f"core-{digest.hexdigest()[:20]}.jar"
    if not jar.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f".{jar.name}.{os.getpid()}.partial.jar"
        command = [kotlinc, "-include-runtime", "-cp", f"{junit}:{hamcrest}", "-d", str(partial),
                   *map(str, _sources("main") + _sources("test"))]
        result = subprocess.run(command, capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if ": error:" in line]
        if result.returncode != 0 or errors or not partial.is_file():
            partial.unlink(missing_ok=True)
            raise AssertionError("kotlinc failed:\n" + (result.stdout + result.stderr)[-6000:])
        os.replace(partial, jar)  # atomic: a concurrent run sees the whole jar or none
        # keep the cache small: the newest few builds (another checkout may be using one of them)
        for old in sorted(cache.glob("core-*.jar"), key=lambda p: p.stat().st_mtime)[:-3]:
            old.unlink(missing_ok=True)
    return jar, junit, hamcrest


# The images PngParametersTest writes, and the settings it wrote into them.
PNG_CASES = {
    "parameters_latin1.png": ("a red circle, on white", "blurry",
                              {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.5, "Seed": 42, "Size": "128x128",
                               "Model": "shapes"}),
    "parameters_utf8.png": ("東京タワー: 夜景 \"night\"", None,
                            {"Steps": 4, "Sampler": "DPM++ 2M Karras", "CFG scale": 7.0, "Seed": 4294967294,
                             "Size": "512x512", "Model": "sd-v1"}),
}


def test_kotlin_core_passes_its_junit_tests(core_jar, tmp_path):
    from sd_keras import metadata

    jar, junit, hamcrest = core_jar
    classes = _test_classes()
    assert len(classes) >= 10, classes
    classpath = os.pathsep.join(map(str, [jar, junit, hamcrest, CORE / "src" / "main" / "resources",
                                          CORE / "src" / "test" / "resources"]))
    result = subprocess.run(
        [_tool("java"), f"-Dsdkeras.merges={MERGES}", f"-Dsdkeras.output={tmp_path}", "-cp", classpath,
         "org.junit.runner.JUnitCore", *classes],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    output = result.stdout + result.stderr
    summary = re.search(r"^OK \((\d+) tests?\)", output, re.M)
    assert result.returncode == 0 and summary, "JUnit failures:\n" + output[-12000:]
    assert int(summary.group(1)) >= 30, output[-2000:]
    # images saved on the phone carry parameters that sd_keras reads back exactly
    for name, (prompt, negative, settings) in PNG_CASES.items():
        expected = metadata.format_parameters(prompt, negative, **settings)
        assert metadata.read_parameters(tmp_path / name) == expected, name


def test_core_uses_only_what_kotlin_1_3_and_the_jvm_offer():
    """Guard against APIs newer than the compilers the core must build with (Debian's kotlinc 1.3 and Gradle's)."""
    forbidden = {
        r"\bfun interface\b": "fun interface (Kotlin 1.4)",
        r"\bsealed interface\b": "sealed interface (Kotlin 1.5)",
        r"\.(lowercase|uppercase|titlecase)\(": "lowercase()/uppercase() (Kotlin 1.5)",
        r"\.(toLowerCase|toUpperCase|capitalize)\(\)": "locale-dependent case conversion (deprecated)",
        r"\bbuildList\b|\bbuildMap\b": "buildList/buildMap (Kotlin 1.6)",
        r"\.code\b": "Char.code (Kotlin 1.5)",
        r"'.'\.(toInt|toByte|toShort)\(\)": "Char-to-number conversion (deprecated)",
        r"\b(maxOrNull|minOrNull|removeLast|removeFirst)\(": "Kotlin 1.4 collection function",
        r"import android\.|import androidx\.": "Android API in the pure JVM core",
    }
    problems = []
    for path in _sources("main") + _sources("test"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith(("*", "//", "/*")):
                continue
            for pattern, what in forbidden.items():
                if re.search(pattern, line):
                    problems.append(f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()}")
    assert not problems, "\n".join(problems)


pytestmark = pytest.mark.once  # backend-independent (see conftest.py)
