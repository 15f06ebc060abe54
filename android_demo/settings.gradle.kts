// The sd_keras Android demo: `core` (pure Kotlin/JVM: tokenizer, samplers, seeded noise, sampling loop, bundle
// manifest) and `app` (the Android UI and its LiteRT binding).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "sd-keras-android-demo"
include(":core", ":app")
