/* core/clock.h: wall and monotonic time, and a settable fake for tests. */
#ifndef ECOM_CLOCK_H
#define ECOM_CLOCK_H

#include <stdint.h>
#include <time.h>

int64_t clock_now_ms(void);  /* Unix ms (or the fake clock when set) */
int64_t clock_mono_us(void); /* monotonic µs (or the fake clock when set) */
int64_t clock_mono_ms(void);
/* Tests: freeze both clocks at ms (0 turns the fake off). */
void clock_fake_set_ms(int64_t ms);
void clock_sleep_ms(int64_t ms);
/* *ts = the time on `clock` ms from now: the deadline of a
 * pthread_cond_timedwait on a condition variable of that clock (real time
 * unless the variable was made with pthread_condattr_setclock). */
void clock_deadline(struct timespec *ts, clockid_t clock, int64_t ms);

#endif
