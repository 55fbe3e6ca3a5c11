/*
 * Example detector driver in plain C11 for the ctagent driver ABI (ctagent_driver.h).
 *
 * It "acquires" noise-free parallel-beam projections of a 200 mm water cylinder, paced in
 * real time when the protocol asks for it. A firmware team replaces fill_view() with the
 * read from their detector and keeps the rest: state checks, abort from another thread,
 * last-error text, buffer ownership (the agent's buffer is filled, never kept).
 *
 * Build against the installed driver SDK with the CMakeLists.txt beside this file, or with
 * pkg-config alone:
 *   cc -std=c11 -shared -fPIC -fvisibility=hidden $(pkg-config --cflags ctagent_driver) \
 *      c_example_driver.c -o libctagent_driver_c_example.so -lpthread -lm
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctagent_driver.h"

#define EXPORT __attribute__((visibility("default")))

/* Hooks that drivers/examples/broken/ overrides to build a deliberately faulty driver. */
#ifndef EXAMPLE_ABI_MAJOR
#define EXAMPLE_ABI_MAJOR CTAGENT_DRIVER_ABI_MAJOR
#endif
#ifndef EXAMPLE_REPORTED_SEQUENCE
#define EXAMPLE_REPORTED_SEQUENCE(sequence) (sequence)
#endif
#ifndef EXAMPLE_HONOURS_ABORT
#define EXAMPLE_HONOURS_ABORT 1
#endif
#ifndef EXAMPLE_NAME
#define EXAMPLE_NAME "c_example"
#endif
/* drivers/examples/faults/: runs before view `v` is produced; returns CTAGENT_OK to go on. */
#ifndef EXAMPLE_BEFORE_VIEW
#define EXAMPLE_BEFORE_VIEW(d, v) CTAGENT_OK
#endif

#define MAX_ROWS 16u
#define MAX_CHANNELS 1024u
#define MAX_VIEW_RATE_HZ 5000.0
#define CYLINDER_RADIUS_MM 100.0
#define MU_WATER_PER_MM 0.0193
#define PI 3.14159265358979323846

enum state { STATE_IDLE, STATE_ARMED, STATE_ACQUIRING, STATE_ENDED, STATE_ABORTED };

struct ctagent_driver {
  enum state state;
  ctagent_protocol protocol;
  uint64_t next_sequence;
  struct timespec started;   /* CLOCK_MONOTONIC at start() */
  uint64_t views_delivered;
  uint64_t errors;
  char last_error[256];

  /* Shared with abort() from other threads. */
  pthread_mutex_t mutex;
  pthread_cond_t wake;
  int aborted;
};

static ctagent_status fail(ctagent_driver* d, ctagent_status status, const char* format, ...) {
  va_list args;
  va_start(args, format);
  pthread_mutex_lock(&d->mutex);
  vsnprintf(d->last_error, sizeof d->last_error, format, args);
  d->errors++;
  pthread_mutex_unlock(&d->mutex);
  va_end(args);
  return status;
}

static int is_aborted(ctagent_driver* d) {
  pthread_mutex_lock(&d->mutex);
  int aborted = d->aborted;
  pthread_mutex_unlock(&d->mutex);
  return aborted;
}

static ctagent_status example_open(const char* options_json, ctagent_driver** out, char* error, size_t capacity) {
  (void)options_json; /* this example has no options */
  if (out == NULL) return CTAGENT_E_INVALID;
  *out = NULL;
  ctagent_driver* d = calloc(1, sizeof *d);
  if (d == NULL) {
    if (error != NULL && capacity > 0) snprintf(error, capacity, "out of memory");
    return CTAGENT_E_INTERNAL;
  }
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&d->wake, &attr);
  pthread_condattr_destroy(&attr);
  pthread_mutex_init(&d->mutex, NULL);
  d->state = STATE_IDLE;
  *out = d;
  return CTAGENT_OK;
}

static void example_close(ctagent_driver* d) {
  if (d == NULL) return;
  pthread_cond_destroy(&d->wake);
  pthread_mutex_destroy(&d->mutex);
  free(d);
}

static ctagent_status example_get_capabilities(ctagent_driver* d, ctagent_capabilities* out) {
  if (d == NULL) return CTAGENT_E_INVALID;
  if (out == NULL || out->struct_size < sizeof *out) {
    return fail(d, CTAGENT_E_INVALID, "get_capabilities: out is NULL or struct_size too small");
  }
  out->max_rows = MAX_ROWS;
  out->max_channels = MAX_CHANNELS;
  out->sample_types = 1u << CTAGENT_SAMPLE_UINT16;
  out->max_view_rate_hz = MAX_VIEW_RATE_HZ;
  snprintf(out->name, sizeof out->name, "%s", EXAMPLE_NAME);
  snprintf(out->model, sizeof out->model, "water-cylinder-200mm");
  return CTAGENT_OK;
}

static ctagent_status example_arm(ctagent_driver* d, const ctagent_protocol* p) {
  if (d == NULL) return CTAGENT_E_INVALID;
  d->state = STATE_IDLE;
  /* An agent of ABI 1.0 sends the shorter 1.0 struct: accept it, read 1.1 fields only if present. */
  if (p == NULL || p->struct_size < CTAGENT_PROTOCOL_SIZE_1_0) {
    return fail(d, CTAGENT_E_INVALID, "arm: protocol NULL or too small");
  }
  if (p->geometry != CTAGENT_GEOMETRY_PARALLEL) {
    return fail(d, CTAGENT_E_UNSUPPORTED, "arm: only the parallel geometry is supported");
  }
  if (p->struct_size >= sizeof *p && p->sample_encoding != CTAGENT_ENCODING_COUNTS) {
    return fail(d, CTAGENT_E_UNSUPPORTED, "arm: only count samples are supported");
  }
  if (p->sample_type != CTAGENT_SAMPLE_UINT16) {
    return fail(d, CTAGENT_E_UNSUPPORTED, "arm: only uint16 samples are supported");
  }
  if (p->rows < 1 || p->rows > MAX_ROWS) {
    return fail(d, CTAGENT_E_INVALID, "arm: %u rows asked, this detector has 1 to %u", p->rows, MAX_ROWS);
  }
  if (p->channels < 1 || p->channels > MAX_CHANNELS) {
    return fail(d, CTAGENT_E_INVALID, "arm: %u channels asked, this detector has 1 to %u", p->channels, MAX_CHANNELS);
  }
  if (p->views_per_rotation < 1 || p->rotations < 1 || !(p->rotation_time_s > 0.0) || !(p->channel_pitch_mm > 0.0)) {
    return fail(d, CTAGENT_E_INVALID, "arm: views_per_rotation, rotations, rotation_time_s, channel_pitch_mm must be > 0");
  }
  if (p->real_time && p->views_per_rotation / p->rotation_time_s > MAX_VIEW_RATE_HZ) {
    return fail(d, CTAGENT_E_INVALID, "arm: view rate %.0f Hz exceeds the detector's %.0f Hz",
                p->views_per_rotation / p->rotation_time_s, MAX_VIEW_RATE_HZ);
  }
  memset(&d->protocol, 0, sizeof d->protocol);
  memcpy(&d->protocol, p, p->struct_size < sizeof *p ? p->struct_size : sizeof *p);
  d->next_sequence = 0;
  pthread_mutex_lock(&d->mutex);
  d->aborted = 0;
  pthread_mutex_unlock(&d->mutex);
  d->state = STATE_ARMED;
  return CTAGENT_OK;
}

static ctagent_status example_start(ctagent_driver* d) {
  if (d == NULL) return CTAGENT_E_INVALID;
  if (d->state != STATE_ARMED) return fail(d, CTAGENT_E_INVALID, "start: not armed; call arm() first");
  clock_gettime(CLOCK_MONOTONIC, &d->started);
  d->state = STATE_ACQUIRING;
  return CTAGENT_OK;
}

/* Waits until `offset_s` after start; returns 0, or -1 if aborted meanwhile. */
static int wait_until(ctagent_driver* d, double offset_s) {
  struct timespec due = d->started;
  long long ns = (long long)due.tv_nsec + (long long)(offset_s * 1e9);
  due.tv_sec += (time_t)(ns / 1000000000LL);
  due.tv_nsec = (long)(ns % 1000000000LL);
  int result = 0;
  pthread_mutex_lock(&d->mutex);
  for (;;) { /* bounded: ends at `due` or on abort */
    if (d->aborted && EXAMPLE_HONOURS_ABORT) {
      result = -1;
      break;
    }
    int rc = pthread_cond_timedwait(&d->wake, &d->mutex, &due);
    if (rc != 0) break; /* ETIMEDOUT: due; anything else: do not spin */
  }
  pthread_mutex_unlock(&d->mutex);
  return result;
}

static void fill_view(const ctagent_protocol* p, uint64_t sequence, uint16_t* out) {
  const double theta = (double)(sequence % p->views_per_rotation) * PI / p->views_per_rotation;
  (void)theta; /* a centred cylinder looks the same from every angle */
  const double i0 = p->unattenuated_counts * p->dose_fraction;
  const double centre = (p->channels - 1) / 2.0;
  for (uint32_t c = 0; c < p->channels; ++c) {
    const double s = (c - centre) * p->channel_pitch_mm;
    const double chord = fabs(s) < CYLINDER_RADIUS_MM ? 2.0 * sqrt(CYLINDER_RADIUS_MM * CYLINDER_RADIUS_MM - s * s) : 0.0;
    double counts = i0 * exp(-MU_WATER_PER_MM * chord);
    if (counts > 65535.0) counts = 65535.0;
    const uint16_t sample = (uint16_t)lround(counts);
    for (uint32_t r = 0; r < p->rows; ++r) out[(size_t)r * p->channels + c] = sample;
  }
}

static ctagent_status example_next_view(ctagent_driver* d, ctagent_view* view, void* samples, uint64_t capacity) {
  if (d == NULL) return CTAGENT_E_INVALID;
  if (view == NULL || view->struct_size < sizeof *view) return fail(d, CTAGENT_E_INVALID, "next_view: view NULL or too small");
  if (d->state == STATE_ABORTED || (is_aborted(d) && EXAMPLE_HONOURS_ABORT)) {
    d->state = STATE_ABORTED;
    return fail(d, CTAGENT_E_ABORTED, "next_view: the scan was aborted");
  }
  if (d->state == STATE_ENDED) return CTAGENT_END_OF_SCAN;
  if (d->state != STATE_ACQUIRING) return fail(d, CTAGENT_E_INVALID, "next_view: no scan running; call arm() and start()");
  const ctagent_protocol* p = &d->protocol;
  const uint64_t total = (uint64_t)p->views_per_rotation * p->rotations;
  const uint64_t v = d->next_sequence;
  if (v >= total) {
    d->state = STATE_ENDED;
    return CTAGENT_END_OF_SCAN;
  }
  const uint64_t bytes = (uint64_t)p->rows * p->channels * sizeof(uint16_t);
  view->sample_bytes = bytes;
  if (samples == NULL || capacity < bytes) {
    return fail(d, CTAGENT_E_BUFFER_TOO_SMALL, "next_view: buffer of %llu bytes, view needs %llu",
                (unsigned long long)capacity, (unsigned long long)bytes);
  }
  const double rate_hz = p->views_per_rotation / p->rotation_time_s;
  if (p->real_time && wait_until(d, (double)v / rate_hz) != 0) {
    d->state = STATE_ABORTED;
    return fail(d, CTAGENT_E_ABORTED, "next_view: the scan was aborted");
  }
  const ctagent_status injected = EXAMPLE_BEFORE_VIEW(d, v);
  if (injected != CTAGENT_OK) return injected;
  fill_view(p, v, samples);
  view->sequence = EXAMPLE_REPORTED_SEQUENCE(v);
  view->gantry_angle_deg = (double)v * 180.0 / p->views_per_rotation;
  view->table_position_mm = p->table_start_mm + ((double)v / p->views_per_rotation) * p->table_speed_mm_per_rotation;
  view->timestamp_us = llround((double)v * 1e6 / rate_hz);
  view->status_flags = 0;
  d->next_sequence = v + 1;
  d->views_delivered++;
  return CTAGENT_OK;
}

static ctagent_status example_stop(ctagent_driver* d) {
  if (d == NULL) return CTAGENT_E_INVALID;
  d->state = STATE_IDLE;
  return CTAGENT_OK;
}

static void example_abort(ctagent_driver* d) {
  if (d == NULL) return;
  pthread_mutex_lock(&d->mutex);
  d->aborted = 1;
  pthread_cond_broadcast(&d->wake);
  pthread_mutex_unlock(&d->mutex);
}

static ctagent_status example_self_test(ctagent_driver* d) {
  if (d == NULL) return CTAGENT_E_INVALID;
  if (d->state == STATE_ACQUIRING) return fail(d, CTAGENT_E_INVALID, "self_test: a scan is running");
  return CTAGENT_OK;
}

static ctagent_status example_get_health(ctagent_driver* d, ctagent_health* out) {
  if (d == NULL) return CTAGENT_E_INVALID;
  if (out == NULL || out->struct_size < sizeof *out) return fail(d, CTAGENT_E_INVALID, "get_health: out NULL or too small");
  switch (d->state) {
    case STATE_ARMED: out->state = CTAGENT_STATE_ARMED; break;
    case STATE_ACQUIRING: out->state = CTAGENT_STATE_ACQUIRING; break;
    case STATE_ABORTED: out->state = CTAGENT_STATE_ABORTED; break;
    default: out->state = CTAGENT_STATE_IDLE; break;
  }
  out->views_delivered = d->views_delivered;
  pthread_mutex_lock(&d->mutex);
  out->errors = d->errors;
  pthread_mutex_unlock(&d->mutex);
  out->temperature_c = 31.5;
  return CTAGENT_OK;
}

static size_t example_last_error(ctagent_driver* d, char* buffer, size_t capacity) {
  if (d == NULL) return 0;
  pthread_mutex_lock(&d->mutex);
  const size_t length = strlen(d->last_error);
  if (buffer != NULL && capacity > 0) snprintf(buffer, capacity, "%s", d->last_error);
  pthread_mutex_unlock(&d->mutex);
  return length;
}

static const ctagent_driver_api example_api = {
    .struct_size = sizeof(ctagent_driver_api),
    .abi_major = EXAMPLE_ABI_MAJOR,
    .abi_minor = CTAGENT_DRIVER_ABI_MINOR,
    .open = example_open,
    .close = example_close,
    .get_capabilities = example_get_capabilities,
    .arm = example_arm,
    .start = example_start,
    .next_view = example_next_view,
    .stop = example_stop,
    .abort = example_abort,
    .self_test = example_self_test,
    .get_health = example_get_health,
    .last_error = example_last_error,
};

EXPORT const ctagent_driver_api* ctagent_driver_get_api(uint32_t host_abi_major) {
  (void)host_abi_major; /* the host checks abi_major; a driver serving several majors would switch here */
  return &example_api;
}
