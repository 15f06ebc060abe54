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
import json
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


@pytest.mark.slow
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


IMAGE_TO_IMAGE_FIXTURE = CORE / "src" / "test" / "resources" / "python" / "image_to_image.json"


def image_to_image_fixture():
    """What Python computes for image-to-image's start: `start_index` for every sampler, step count and strength
    below, and the noised start latent (`signal_scale[start] * original + noise_scale[start] * noise`, float32, as
    `BundleRunner.image_to_image`) for a few cases. ImageToImageGoldenTest compares the Kotlin port with it."""
    import numpy as np

    from sd_keras import noise as noise_lib
    from sd_keras.schedulers import get_sampler

    samplers = ["DDIM", "DDIM KerasCV", "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras"]
    steps = [1, 4, 20, 50]
    strengths = [0.0, 0.1, 0.3, 0.5, 0.75, 0.99, 1.0]
    starts = [{"sampler": name, "steps": count, "strength": strength,
               "start": int(get_sampler(name, count).start_index(strength))}
              for name in samplers for count in steps for strength in strengths]
    latents = []
    for name, count, strength, seed in [("Euler a", 20, 0.75, 42), ("DDIM", 10, 0.5, 7), ("DPM++ 2M Karras", 4, 1.0, 3)]:
        sampler = get_sampler(name, count)
        start = sampler.start_index(strength)
        tables = sampler.tables()
        original = (np.arange(32, dtype=np.float32) * np.float32(0.37) % np.float32(2.0) - np.float32(1.0))
        initial, _ = noise_lib.latent_noise(seed, 1, (2, 4, 4), 0)
        initial = np.asarray(initial, np.float32).reshape(-1)
        noised = tables["signal_scale"][start] * original + tables["noise_scale"][start] * initial
        latents.append({"sampler": name, "steps": count, "strength": strength, "seed": seed, "start": int(start),
                        "original": [float(v) for v in original], "noised": [float(v) for v in noised.astype(np.float32)]})
    return {"start_index": starts, "noised_latent": latents}


def test_image_to_image_fixture_is_what_python_computes():
    fresh = image_to_image_fixture()
    committed = json.loads(IMAGE_TO_IMAGE_FIXTURE.read_text(encoding="utf-8"))
    assert committed == fresh, (f"{IMAGE_TO_IMAGE_FIXTURE} is stale; rewrite it with "
                                "python -m tests.test_android_core and update the Kotlin port")


# The Gradle wrapper committed in android_demo: the jar Gradle 8.10.x's `wrapper` task writes (Gradle publishes this
# sha256 for the 8.10 to 8.12 wrapper jars) and the distribution it downloads, pinned by the sha256 Gradle
# publishes for gradle-8.10.2-bin.zip.
ANDROID = REPO / "android_demo"
WRAPPER_JAR_SHA256 = "2db75c40782f5e8ba1fc278a5574bab070adccb2d21ca5a6e5ed840888448046"
GRADLE_8_10_2_BIN_SHA256 = "31c55713e40233a8303827ceb42ca48a47267a0ad4bab9177123121e71524c26"


def _properties(path):
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().replace("\\:", ":")
    return values


def test_gradle_wrapper_is_the_official_jar_and_pins_its_distribution():
    jar = ANDROID / "gradle" / "wrapper" / "gradle-wrapper.jar"
    assert hashlib.sha256(jar.read_bytes()).hexdigest() == WRAPPER_JAR_SHA256
    for script in ("gradlew", "gradlew.bat"):
        text = (ANDROID / script).read_text(encoding="utf-8")
        assert "org.gradle.wrapper.GradleWrapperMain" in text and "gradle-wrapper.jar" in text, script
    assert os.access(ANDROID / "gradlew", os.X_OK)
    properties = _properties(ANDROID / "gradle" / "wrapper" / "gradle-wrapper.properties")
    assert properties["distributionUrl"] == "https://services.gradle.org/distributions/gradle-8.10.2-bin.zip"
    assert properties["distributionSha256Sum"] == GRADLE_8_10_2_BIN_SHA256
    # the Android Gradle plugin in build.gradle.kts needs at least this Gradle (AGP 8.7: Gradle 8.9)
    agp = re.search(r'id\("com.android.application"\) version "(\d+)\.(\d+)', (ANDROID / "build.gradle.kts").read_text())
    assert agp and (int(agp.group(1)), int(agp.group(2))) <= (8, 7), "a newer AGP may need a newer Gradle"


def _run_wrapper(tmp_path, distribution, checksum):
    project = tmp_path / "project"
    (project / "gradle" / "wrapper").mkdir(parents=True, exist_ok=True)
    shutil.copy(ANDROID / "gradlew", project / "gradlew")
    shutil.copy(ANDROID / "gradle" / "wrapper" / "gradle-wrapper.jar", project / "gradle" / "wrapper")
    (project / "gradle" / "wrapper" / "gradle-wrapper.properties").write_text(
        "distributionBase=GRADLE_USER_HOME\ndistributionPath=wrapper/dists\n"
        f"distributionSha256Sum={checksum}\ndistributionUrl={distribution.as_uri()}\n"
        "zipStoreBase=GRADLE_USER_HOME\nzipStorePath=wrapper/dists\n")
    home = tmp_path / "home"
    result = subprocess.run(["sh", str(project / "gradlew"), "--version"], cwd=project, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "GRADLE_USER_HOME": str(home)})
    return result, home


def test_gradle_wrapper_verifies_and_unpacks_a_distribution(tmp_path):
    """The committed gradlew + jar run on this JVM: a distribution whose sha256 differs from the pinned one is
    refused, and one that matches is unpacked (it holds no Gradle, so the launch itself then fails)."""
    import zipfile

    _tool("java")
    distribution = tmp_path / "gradle-0-bin.zip"
    with zipfile.ZipFile(distribution, "w") as archive:
        for folder in ("gradle-0/", "gradle-0/lib/"):  # the wrapper creates folders from their entries
            archive.writestr(folder, "")
        archive.writestr("gradle-0/lib/README", "no Gradle here\n")
    good = hashlib.sha256(distribution.read_bytes()).hexdigest()
    bad = ("0" if good[0] != "0" else "1") + good[1:]
    refused, home = _run_wrapper(tmp_path / "bad", distribution, bad)
    assert refused.returncode != 0
    assert "Verification of Gradle distribution failed" in refused.stdout + refused.stderr
    assert not list(home.rglob("gradle-0/lib/README"))
    accepted, home = _run_wrapper(tmp_path / "good", distribution, good)
    output = accepted.stdout + accepted.stderr
    assert "Verification of Gradle distribution failed" not in output, output
    assert list(home.rglob("gradle-0/lib/README")), output


def test_android_app_declares_what_long_generations_need():
    manifest = (ANDROID / "app" / "src" / "main" / "AndroidManifest.xml").read_text(encoding="utf-8")
    for permission in ("FOREGROUND_SERVICE", "FOREGROUND_SERVICE_SPECIAL_USE", "WAKE_LOCK", "POST_NOTIFICATIONS"):
        assert f'android.permission.{permission}"' in manifest, permission
    assert re.search(r'android:name="\.GenerationService"[^>]*android:foregroundServiceType="specialUse"', manifest, re.S)
    assert "PROPERTY_SPECIAL_USE_FGS_SUBTYPE" in manifest
    config_changes = re.search(r'android:configChanges="([^"]+)"', manifest).group(1).split("|")
    assert {"uiMode", "orientation", "screenSize"} <= set(config_changes)
    # one pinned LiteRT version for both artifacts, and the README names it
    build = (ANDROID / "app" / "build.gradle.kts").read_text(encoding="utf-8")
    version = re.search(r'val litertVersion = "(\d+\.\d+\.\d+)"', build).group(1)
    for artifact in ("litert", "litert-gpu"):
        assert f'"com.google.ai.edge.litert:{artifact}:$litertVersion"' in build, artifact
    assert f"com.google.ai.edge.litert:litert:{version}" in (ANDROID / "README.md").read_text(encoding="utf-8")


pytestmark = pytest.mark.once  # backend-independent (see conftest.py)


if __name__ == "__main__":  # rewrite the image-to-image fixture from the library
    from sd_keras.files import atomic_write

    IMAGE_TO_IMAGE_FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(IMAGE_TO_IMAGE_FIXTURE, "w", encoding="utf-8") as out:
        out.write(json.dumps(image_to_image_fixture(), indent=1) + "\n")
    print(IMAGE_TO_IMAGE_FIXTURE)
