-- The UTC calendar, prepended to every script (Redis's Lua has no os.date). The same
-- integer arithmetic as gateway/limiter/rules.py (Howard Hinnant's civil-from-days).
local function civil_from_days(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- Whole Unix seconds -> the day and month containing them, and when each ends.
local function calendar(seconds)
  local days = math.floor(seconds / 86400)
  local y, m, d = civil_from_days(days)
  local ny, nm = y, m + 1
  if m == 12 then ny, nm = y + 1, 1 end
  return {
    day = string.format('%04d-%02d-%02d', y, m, d),
    month = string.format('%04d-%02d', y, m),
    next_day = (days + 1) * 86400,
    next_month = days_from_civil(ny, nm, 1) * 86400,
  }
end

-- Redis's clock, in seconds with microseconds; and a float as stored and returned.
local function clock()
  local time = redis.call('TIME')
  return tonumber(time[1]) + tonumber(time[2]) / 1000000, tonumber(time[1])
end

local function fixed(x)
  return string.format('%.17g', x)
end

