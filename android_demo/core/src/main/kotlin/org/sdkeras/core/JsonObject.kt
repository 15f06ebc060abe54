package org.sdkeras.core

import java.math.BigInteger

/**
 * Typed, path-aware access to a parsed JSON object: every failed lookup names the field, e.g.
 * `manifest.components.decoder.sha256 must be a string`.
 */
internal class JsonObject(val map: Map<String, Any?>, val path: String) {
    fun has(key: String) = map.containsKey(key)

    private fun where(key: String) = if (path.length == 0) key else "$path.$key"

    private fun required(key: String): Any? {
        if (!map.containsKey(key)) throw JsonException("${where(key)} is missing")
        return map[key]
    }

    fun string(key: String): String =
        required(key) as? String ?: throw JsonException("${where(key)} must be a string")

    fun optionalString(key: String): String? {
        if (!map.containsKey(key) || map[key] == null) return null
        return string(key)
    }

    fun boolean(key: String): Boolean =
        required(key) as? Boolean ?: throw JsonException("${where(key)} must be true or false")

    fun long(key: String): Long = asLong(required(key), where(key))

    fun int(key: String): Int {
        val value = long(key)
        if (value < Int.MIN_VALUE || value > Int.MAX_VALUE) throw JsonException("${where(key)} is out of range")
        return value.toInt()
    }

    fun double(key: String): Double = asDouble(required(key), where(key))

    fun obj(key: String): JsonObject {
        @Suppress("UNCHECKED_CAST")
        val value = required(key) as? Map<String, Any?> ?: throw JsonException("${where(key)} must be an object")
        return JsonObject(value, where(key))
    }

    fun list(key: String): List<Any?> =
        required(key) as? List<Any?> ?: throw JsonException("${where(key)} must be an array")

    fun objects(key: String): List<JsonObject> {
        val items = list(key)
        val result = ArrayList<JsonObject>(items.size)
        for ((index, item) in items.withIndex()) {
            @Suppress("UNCHECKED_CAST")
            val map = item as? Map<String, Any?> ?: throw JsonException("${where(key)}[$index] must be an object")
            result.add(JsonObject(map, "${where(key)}[$index]"))
        }
        return result
    }

    fun ints(key: String): IntArray {
        val items = list(key)
        val result = IntArray(items.size)
        for ((index, item) in items.withIndex()) {
            val value = asLong(item, "${where(key)}[$index]")
            if (value < Int.MIN_VALUE || value > Int.MAX_VALUE) {
                throw JsonException("${where(key)}[$index] is out of range")
            }
            result[index] = value.toInt()
        }
        return result
    }

    fun floats(key: String): FloatArray {
        val items = list(key)
        val result = FloatArray(items.size)
        for ((index, item) in items.withIndex()) result[index] = asDouble(item, "${where(key)}[$index]").toFloat()
        return result
    }

    fun strings(key: String): List<String> {
        val items = list(key)
        val result = ArrayList<String>(items.size)
        for ((index, item) in items.withIndex()) {
            result.add(item as? String ?: throw JsonException("${where(key)}[$index] must be a string"))
        }
        return result
    }

    companion object {
        fun parse(text: String, path: String = ""): JsonObject {
            @Suppress("UNCHECKED_CAST")
            val map = Json.parse(text) as? Map<String, Any?>
                ?: throw JsonException("${if (path.length == 0) "the document" else path} must be a JSON object")
            return JsonObject(map, path)
        }

        fun asLong(value: Any?, where: String): Long = when (value) {
            is Long -> value
            is BigInteger -> throw JsonException("$where is out of range")
            is Double -> {
                if (value != Math.floor(value) || Math.abs(value) > 9.007199254740992E15) {
                    throw JsonException("$where must be an integer")
                }
                value.toLong()
            }
            else -> throw JsonException("$where must be an integer")
        }

        fun asDouble(value: Any?, where: String): Double = when (value) {
            is Long -> value.toDouble()
            is Double -> value
            is BigInteger -> value.toDouble()
            else -> throw JsonException("$where must be a number")
        }
    }
}
