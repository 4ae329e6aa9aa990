/* SPDX-License-Identifier: MIT */
#pragma once

#define EDGED_VERSION "0.1.0"
