/*
 * ctagent detector driver ABI, version 1.2.
 *
 * A detector driver is a shared object that exports one C symbol:
 *
 *     const ctagent_driver_api* ctagent_driver_get_api(uint32_t host_abi_major);
 *
 * returning a static table of function pointers. The agent refuses a driver whose table has
 * another major version or a null function pointer. Minor versions only append fields at
 * the end of structs and of the table; every struct starts with `struct_size`, which the
 * caller sets to the size it knows and the callee never writes beyond.
 *
 * Version 1.1 appended the fan-beam geometry and the sample encoding to ctagent_protocol
 * (CTAGENT_GEOMETRY_FAN, source_to_isocenter_mm, source_to_detector_mm, sample_encoding,
 * line_integral_slope, line_integral_intercept). The
 * agent sends such protocols only to drivers whose table says abi_minor >= 1; a driver built
 * for 1.0 is refused them with a message before its arm() is called. A 1.1 driver should accept
 * a protocol of at least CTAGENT_PROTOCOL_SIZE_1_0 bytes and read the 1.1 fields only when
 * struct_size covers them (otherwise: parallel beam, counts).
 *
 * Version 1.2 appended `wait_scan` to ctagent_driver_api: a driver may announce a scan that the
 * scanner itself armed and started (the operator pressed the button on the console), with its
 * protocol and, when the scanner has them, the exam's accession number and scheduled procedure
 * step ID. The agent's daemon then acquires every scan without a command. The table of a 1.1
 * driver ends before `wait_scan` (its struct_size says so) and still loads: the agent reads
 * `wait_scan` only when abi_minor >= 2 and struct_size covers it, and a 1.2 driver that cannot
 * announce scans sets it to NULL (the one function pointer that may be NULL).
 *
 * Threading: every call on a handle comes from one thread at a time (the agent's acquisition
 * thread), except `abort`, which may come from any thread at any time between `open` and
 * `close`, and must make a blocked `next_view` return CTAGENT_E_ABORTED promptly (< 100 ms).
 *
 * Ownership: the caller owns every buffer. Drivers write into buffers the caller passes
 * (view samples, error text, capability/health structs) and never keep pointers to them
 * after the call returns. Strings passed to the driver are valid only during the call.
 * The driver owns its handle; `close` frees it.
 *
 * Plain C99, fixed-width types, no C++ types and no exceptions across this boundary, so a
 * driver can be built by any compiler.
 */
#ifndef CTAGENT_DRIVER_H
#define CTAGENT_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CTAGENT_DRIVER_ABI_MAJOR 1u
#define CTAGENT_DRIVER_ABI_MINOR 2u
#define CTAGENT_DRIVER_ENTRY_SYMBOL "ctagent_driver_get_api"

/* Result of every call. Negative values are errors; `last_error` then says why. */
typedef int32_t ctagent_status;
#define CTAGENT_OK 0
#define CTAGENT_END_OF_SCAN 1          /* next_view: the scan's last view was delivered */
#define CTAGENT_NO_SCAN 2              /* wait_scan (ABI 1.2): no scan was announced within the timeout */
#define CTAGENT_E_INVALID (-1)         /* bad argument or protocol, or call in the wrong state */
#define CTAGENT_E_UNSUPPORTED (-2)     /* the protocol asks for something the detector cannot do */
#define CTAGENT_E_IO (-3)              /* device, link or file failure */
#define CTAGENT_E_ABORTED (-4)         /* abort() was called; stays so until the next arm */
#define CTAGENT_E_BUFFER_TOO_SMALL (-5) /* next_view: view not consumed; pass a larger buffer */
#define CTAGENT_E_HARDWARE (-6)        /* detector fault (self-test, over-temperature, ...) */
#define CTAGENT_E_INTERNAL (-7)        /* a bug in the driver */

/* Sample types (values of ctagent_protocol.sample_type; bit (1 << type) in capabilities). */
#define CTAGENT_SAMPLE_UINT16 1u
#define CTAGENT_SAMPLE_FLOAT32 2u

/* Geometry (ctagent_protocol.geometry). */
#define CTAGENT_GEOMETRY_PARALLEL 1u
#define CTAGENT_GEOMETRY_FAN 2u /* ABI 1.1: third-generation fan beam, arc detector */

/* Sample encoding (ctagent_protocol.sample_encoding, ABI 1.1). */
#define CTAGENT_ENCODING_COUNTS 0u        /* detector counts (photons) */
#define CTAGENT_ENCODING_LINE_INTEGRAL 1u /* line integrals: p = slope * sample + intercept */

/* Per-view status flags (ctagent_view.status_flags). */
#define CTAGENT_VIEW_SATURATED (1u << 0)     /* a sample hit the ADC ceiling */
#define CTAGENT_VIEW_DEAD_CHANNEL (1u << 1)  /* a channel is known dead */

/* Health states (ctagent_health.state). */
#define CTAGENT_STATE_IDLE 0u
#define CTAGENT_STATE_ARMED 1u
#define CTAGENT_STATE_ACQUIRING 2u
#define CTAGENT_STATE_ABORTED 3u
#define CTAGENT_STATE_FAULT 4u

typedef struct ctagent_driver ctagent_driver; /* opaque, owned by the driver */

typedef struct ctagent_capabilities {
  uint32_t struct_size;
  uint32_t max_rows;
  uint32_t max_channels;
  uint32_t sample_types;     /* bit (1 << CTAGENT_SAMPLE_*) per supported type */
  double max_view_rate_hz;   /* highest view rate the detector sustains in real time */
  char name[64];             /* driver name, NUL-terminated */
  char model[64];            /* detector model, NUL-terminated */
} ctagent_capabilities;

typedef struct ctagent_protocol {
  uint32_t struct_size;
  uint32_t geometry;                 /* CTAGENT_GEOMETRY_* */
  uint32_t views_per_rotation;       /* over 180 degrees for parallel beam, 360 for fan beam */
  uint32_t rotations;
  uint32_t rows;
  uint32_t channels;
  uint32_t sample_type;              /* CTAGENT_SAMPLE_* */
  uint32_t real_time;                /* 1: pace views at views_per_rotation / rotation_time_s */
  double channel_pitch_mm;
  double row_pitch_mm;
  double rotation_time_s;
  double table_start_mm;
  double table_speed_mm_per_rotation;
  double dose_fraction;              /* (0, 1] */
  double unattenuated_counts;
  uint64_t seed;                     /* simulated drivers: noise seed */
  /* ABI 1.1 (present when struct_size >= sizeof(ctagent_protocol) of a 1.1 header). Fan beam:
   * a point source at source_to_isocenter_mm from the rotation axis, an arc detector centered
   * on the source at source_to_detector_mm; channel and row pitches are given at isocenter. */
  double source_to_isocenter_mm;
  double source_to_detector_mm;
  uint32_t sample_encoding;          /* CTAGENT_ENCODING_* */
  uint32_t reserved;                 /* 0 */
  double line_integral_slope;        /* CTAGENT_ENCODING_LINE_INTEGRAL: p per sample unit */
  double line_integral_intercept;    /* CTAGENT_ENCODING_LINE_INTEGRAL: p of sample 0 */
} ctagent_protocol;

/* Size of ABI 1.0's ctagent_protocol: the smallest protocol a 1.1 driver must accept. */
#define CTAGENT_PROTOCOL_SIZE_1_0 offsetof(ctagent_protocol, source_to_isocenter_mm)

typedef struct ctagent_view {
  uint32_t struct_size;
  uint32_t status_flags;             /* CTAGENT_VIEW_* */
  uint64_t sequence;                 /* 0-based, consecutive within a scan */
  double gantry_angle_deg;
  double table_position_mm;
  int64_t timestamp_us;              /* since the scan started */
  uint64_t sample_bytes;             /* bytes written to the caller's buffer */
} ctagent_view;

typedef struct ctagent_health {
  uint32_t struct_size;
  uint32_t state;                    /* CTAGENT_STATE_* */
  uint64_t views_delivered;          /* since open */
  uint64_t errors;                   /* failed calls since open */
  double temperature_c;              /* detector temperature, NaN if unknown */
} ctagent_health;

/* ABI 1.2: what wait_scan reports about a scan the scanner started. The caller owns every byte:
 * it sets struct_size, points `protocol` at its own ctagent_protocol (with that struct's
 * struct_size set) and the driver fills both. Strings are NUL-terminated, empty when unknown. */
typedef struct ctagent_scan_announcement {
  uint32_t struct_size;
  uint32_t reserved;                 /* 0 */
  ctagent_protocol* protocol;        /* caller's buffer: the protocol the scan runs with */
  char accession_number[65];         /* DICOM Accession Number (0008,0050), at most 16 characters */
  char procedure_step_id[65];        /* Scheduled Procedure Step ID (0040,0009), at most 16 characters */
} ctagent_scan_announcement;

typedef struct ctagent_driver_api {
  uint32_t struct_size;              /* sizeof(ctagent_driver_api) of the driver's header */
  uint32_t abi_major;                /* CTAGENT_DRIVER_ABI_MAJOR the driver was built with */
  uint32_t abi_minor;

  /* Opens the detector. `options_json` is the driver's config object as JSON text (never
   * NULL; "{}" when empty). On failure writes a NUL-terminated reason into `error`
   * (capacity `error_capacity`, may be truncated) and leaves *out NULL. */
  ctagent_status (*open)(const char* options_json, ctagent_driver** out, char* error, size_t error_capacity);
  /* Stops anything running and frees the handle. Must not block for long (< 1 s). */
  void (*close)(ctagent_driver* driver);

  ctagent_status (*get_capabilities)(ctagent_driver* driver, ctagent_capabilities* out);
  /* Checks the protocol against the capabilities and prepares a scan; a failed arm leaves
   * the driver idle. Allowed when idle, after END_OF_SCAN, after stop and after abort. */
  ctagent_status (*arm)(ctagent_driver* driver, const ctagent_protocol* protocol);
  /* Starts acquisition of the armed scan (X-ray on, gantry turning). */
  ctagent_status (*start)(ctagent_driver* driver);
  /* Blocks until the next view, writes its metadata to *view and its rows * channels samples
   * (row-major, little-endian) to `samples`. CTAGENT_END_OF_SCAN after the last view (and
   * again on every later call). If `samples_capacity` is too small: CTAGENT_E_BUFFER_TOO_SMALL,
   * view->sample_bytes set to the size needed, and the view is not consumed. */
  ctagent_status (*next_view)(ctagent_driver* driver, ctagent_view* view, void* samples, uint64_t samples_capacity);
  /* Ends the scan early or after END_OF_SCAN; the driver returns to idle. */
  ctagent_status (*stop)(ctagent_driver* driver);
  /* Emergency stop, callable from any thread. */
  void (*abort)(ctagent_driver* driver);
  /* Runs the detector's self-test; allowed when idle. */
  ctagent_status (*self_test)(ctagent_driver* driver);
  ctagent_status (*get_health)(ctagent_driver* driver, ctagent_health* out);
  /* Copies the message of the most recent failed call on this handle into `buffer`
   * (NUL-terminated, truncated to `capacity`); returns the full length without the NUL. */
  size_t (*last_error)(ctagent_driver* driver, char* buffer, size_t capacity);

  /* ABI 1.2 (present when struct_size covers it and abi_minor >= 2; may be NULL: the driver
   * does not announce scans). Blocks up to `timeout_ms` until the scanner starts a scan of its
   * own. CTAGENT_OK: *out describes it, and the driver is armed with out->protocol exactly as
   * after arm(); the agent then calls start() and next_view() as for a scan it armed itself.
   * CTAGENT_NO_SCAN: none within the timeout. Allowed when idle (as arm is); abort() makes a
   * blocked wait_scan return CTAGENT_E_ABORTED promptly. Called from the acquisition thread. */
  ctagent_status (*wait_scan)(ctagent_driver* driver, uint32_t timeout_ms, ctagent_scan_announcement* out);
} ctagent_driver_api;

/* Size of ABI 1.1's ctagent_driver_api: the smallest table the agent loads. */
#define CTAGENT_DRIVER_API_SIZE_1_1 offsetof(ctagent_driver_api, wait_scan)

/* The one symbol a driver exports. `host_abi_major` is the agent's major version; a driver
 * may return NULL if it cannot serve it. */
typedef const ctagent_driver_api* (*ctagent_driver_get_api_fn)(uint32_t host_abi_major);

#ifdef __cplusplus
}
#endif

#endif /* CTAGENT_DRIVER_H */
