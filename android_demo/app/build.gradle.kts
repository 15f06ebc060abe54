plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

// LiteRT's Maven coordinates: com.google.ai.edge.litert:litert and :litert-gpu (see android_demo/README.md)
val litertVersion = "2.3.0"

android {
    namespace = "org.sdkeras.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.sdkeras.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        // LiteRT's GPU and CPU kernels ship for these ABIs; phones are arm64
        ndk {
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            // debug signing so that `assembleRelease` gives an installable APK for the demo
            signingConfig = signingConfigs.getByName("debug")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    buildFeatures {
        buildConfig = false
    }
}

kotlin {
    compilerOptions {
        jvmTarget.set(org.jetbrains.kotlin.gradle.dsl.JvmTarget.JVM_17)
    }
}

dependencies {
    implementation(project(":core"))
    implementation("androidx.core:core-ktx:1.13.1")
    implementation("androidx.appcompat:appcompat:1.7.0")
    // the Photo Picker contract (PickVisualMedia) for image-to-image
    implementation("androidx.activity:activity-ktx:1.9.3")
    // LiteRT CompiledModel API (Google's Maven repository; version as in LiteRT's Android docs). From 2.3.0 the
    // GPU accelerator is a separate artifact: without it a GPU+CPU compilation runs everything on the CPU.
    implementation("com.google.ai.edge.litert:litert:$litertVersion")
    implementation("com.google.ai.edge.litert:litert-gpu:$litertVersion")
}
