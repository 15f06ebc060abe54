package org.sdkeras.demo

import android.Manifest
import android.app.Notification
import android.app.NotificationChannel
import android.app.NotificationManager
import android.app.PendingIntent
import android.app.Service
import android.content.Context
import android.content.Intent
import android.content.pm.PackageManager
import android.content.pm.ServiceInfo
import android.os.Build
import android.os.IBinder
import android.os.PowerManager
import androidx.core.app.NotificationCompat
import androidx.core.app.NotificationManagerCompat
import androidx.core.app.ServiceCompat
import androidx.core.content.ContextCompat

/**
 * Keeps the app alive and the CPU awake while a job runs (a generation of several minutes on a CPU-only phone
 * must survive the screen turning off and the app going to the background): a foreground service with a
 * progress notification and a partial wake lock. The work itself runs on [GenerationController]'s thread; the
 * controller starts this service when a job starts and stops it when the job ends.
 */
class GenerationService : Service() {
    private var wakeLock: PowerManager.WakeLock? = null

    override fun onBind(intent: Intent?): IBinder? = null

    override fun onStartCommand(intent: Intent?, flags: Int, startId: Int): Int {
        val type = if (Build.VERSION.SDK_INT >= 34) ServiceInfo.FOREGROUND_SERVICE_TYPE_SPECIAL_USE else 0
        ServiceCompat.startForeground(this, NOTIFICATION_ID, notification(this, getString(R.string.notification_started), -1), type)
        if (wakeLock == null) {
            val power = getSystemService(Context.POWER_SERVICE) as PowerManager
            val lock = power.newWakeLock(PowerManager.PARTIAL_WAKE_LOCK, "sd_keras:generation")
            lock.setReferenceCounted(false)
            lock.acquire(MAX_WAKE_MILLIS) // released when the job ends; the timeout only guards against a hang
            wakeLock = lock
        }
        running = this
        // the job may have ended before the system delivered this start
        if (!GenerationController.busy) stopNow()
        return START_NOT_STICKY
    }

    private fun stopNow() {
        ServiceCompat.stopForeground(this, ServiceCompat.STOP_FOREGROUND_REMOVE)
        stopSelf()
    }

    override fun onDestroy() {
        wakeLock?.let { if (it.isHeld) it.release() }
        wakeLock = null
        if (running === this) running = null
        super.onDestroy()
    }

    companion object {
        private const val CHANNEL_ID = "generation"
        private const val NOTIFICATION_ID = 1
        private const val MAX_WAKE_MILLIS = 3L * 60 * 60 * 1000

        /** The running instance; touched on the main thread only. */
        private var running: GenerationService? = null

        /** Start the service (main thread, while the app is in the foreground: the user started a job). */
        fun start(context: Context) {
            createChannel(context)
            ContextCompat.startForegroundService(context, Intent(context, GenerationService::class.java))
        }

        /** Stop it (main thread); a start not yet delivered stops itself in onStartCommand. */
        fun stop() {
            running?.stopNow()
        }

        /** Show the job's progress ([percent] < 0: indeterminate) in the service's notification. */
        fun update(context: Context, text: String, percent: Int) {
            if (running == null) return
            if (Build.VERSION.SDK_INT >= 33 && ContextCompat.checkSelfPermission(context,
                    Manifest.permission.POST_NOTIFICATIONS) != PackageManager.PERMISSION_GRANTED) {
                return // the service still runs; Android shows it in the task manager instead
            }
            NotificationManagerCompat.from(context).notify(NOTIFICATION_ID, notification(context, text, percent))
        }

        private fun createChannel(context: Context) {
            val manager = context.getSystemService(Context.NOTIFICATION_SERVICE) as NotificationManager
            val channel = NotificationChannel(CHANNEL_ID, context.getString(R.string.notification_channel),
                NotificationManager.IMPORTANCE_LOW)
            manager.createNotificationChannel(channel)
        }

        private fun notification(context: Context, text: String, percent: Int): Notification {
            val open = PendingIntent.getActivity(context, 0, Intent(context, MainActivity::class.java)
                .addFlags(Intent.FLAG_ACTIVITY_SINGLE_TOP), PendingIntent.FLAG_IMMUTABLE)
            return NotificationCompat.Builder(context, CHANNEL_ID)
                .setSmallIcon(android.R.drawable.ic_menu_gallery)
                .setContentTitle(context.getString(R.string.app_name))
                .setContentText(text)
                .setOngoing(true)
                .setOnlyAlertOnce(true)
                .setContentIntent(open)
                .setProgress(100, Math.max(0, percent), percent < 0)
                .setForegroundServiceBehavior(NotificationCompat.FOREGROUND_SERVICE_IMMEDIATE)
                .build()
        }
    }
}
