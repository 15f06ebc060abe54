// Pure Kotlin/JVM: everything of a generation that is not Android UI. Its tests compare it with golden vectors
// written by the Python library (`sd-keras golden`); tests/test_android_core.py runs the same tests with kotlinc.
plugins {
    id("org.jetbrains.kotlin.jvm")
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

kotlin {
    compilerOptions {
        jvmTarget.set(org.jetbrains.kotlin.gradle.dsl.JvmTarget.JVM_17)
    }
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // CLIP's merges file, shipped with the Python package
    systemProperty("sdkeras.merges", rootProject.file("../sd_keras/assets/bpe_simple_vocab_16e6.txt.gz").path)
    workingDir = rootProject.projectDir.parentFile
}
