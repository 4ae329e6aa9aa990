/* SPDX-License-Identifier: MIT */
#pragma once

/* Power supplies: <root>/sys/class/power_supply/NAME/{type,online,status,capacity,scope,
 * present,energy_full,...}. External supplies (Mains, USB) say whether the machine is
 * plugged in; system batteries are combined into one figure. Peripherals' own batteries
 * (scope=Device: mice, keyboards, phones) and empty battery bays (present=0) are ignored
 * and counted.
 *
 * No battery means mains power: a desktop has only a Mains supply, or none at all, and a
 * Raspberry Pi may have no power_supply directory. Then n_batteries is 0 and
 * sensors_power_on_battery() is false; the policy treats "no battery" as AC. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
        SENSORS_BATTERY_UNKNOWN = 0, /* "Unknown", missing, or a string we do not know */
        SENSORS_BATTERY_CHARGING,
        SENSORS_BATTERY_DISCHARGING,
        SENSORS_BATTERY_NOT_CHARGING,
        SENSORS_BATTERY_FULL,
} sensors_battery_status;

typedef enum {
        SENSORS_SUPPLY_OTHER = 0, /* UPS, Wireless, ...: ignored */
        SENSORS_SUPPLY_AC,        /* "Mains", "USB" and the older "USB_*" types */
        SENSORS_SUPPLY_BATTERY,   /* "Battery" */
} sensors_supply_kind;

/* One supply's attributes as read from sysfs; the input of sensors_power_combine(). */
typedef struct {
        sensors_supply_kind kind;
        bool device_scope;             /* scope=Device: powers a peripheral, not this machine */
        bool present;                  /* false only for present=0 */
        bool online;                   /* AC: online > 0 (USB reports 1 or 2) */
        sensors_battery_status status; /* batteries */
        double capacity;               /* batteries: percent 0..100; NAN if unknown */
        uint64_t energy_full;          /* batteries: µWh; 0 if unknown */
        unsigned n_bad;                /* attributes that held garbage or failed to read */
} sensors_supply;

typedef struct {
        bool available;                /* <root>/sys/class/power_supply exists */
        bool have_ac;                  /* a Mains or USB supply exists */
        bool ac_online;                /* one of them is online */
        unsigned n_batteries;          /* present system batteries */
        double battery_percent;        /* combined, see below; NAN if none has a capacity */
        bool any_discharging;          /* a system battery reports Discharging */
        sensors_battery_status status; /* combined: Discharging > Charging > Full (all) >
                                        * Not charging > Unknown */
        unsigned n_ignored;            /* scope=Device, present=0, other supply types */
        unsigned n_bad;                /* typeless supplies, attributes holding garbage */
} sensors_power;

/* "Charging" → SENSORS_BATTERY_CHARGING etc.; anything else SENSORS_BATTERY_UNKNOWN.
 * Surrounding whitespace is not stripped. */
sensors_battery_status sensors_battery_status_from_string(const char *s);
const char *sensors_battery_status_to_string(sensors_battery_status s);

sensors_supply_kind sensors_supply_kind_from_type(const char *type);

/* Combines supplies into one state. Battery percent: the capacities weighted by energy_full
 * when every battery with a capacity reports energy_full, else their plain mean. */
void sensors_power_combine(const sensors_supply *supplies, size_t n, sensors_power *ret);

/* True when running on battery: a battery exists and either the AC supplies are all
 * offline, or there are none and a battery is discharging. No battery: false. */
bool sensors_power_on_battery(const sensors_power *p);

/* Reads every supply below root (NULL: "/"). capacity falls back to energy_now/energy_full
 * or charge_now/charge_full when the capacity file is missing or unusable. A missing
 * power_supply directory gives available = false (and otherwise the "no battery" state)
 * and returns 0. Fails only if root or the directory cannot be opened for another reason,
 * or out of memory (logged). */
int sensors_power_read(const char *root, sensors_power *ret);
