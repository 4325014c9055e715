# Writes CTEST_FILE: one CTest test per TEST_CASE of the unit-test program TEST_EXECUTABLE,
# named "<topic>: <test case>" for the file tests/unit/unit-<topic>.cpp that holds it, each run
# in its own process with OpenMP at one thread and passive waiting (tests of thread-count
# independence set their own). Run after each build of the program (tests/CMakeLists.txt).
# TOPICS: the topics, comma-separated.
foreach(var TEST_EXECUTABLE TOPICS CTEST_FILE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "discover_unit_tests.cmake: ${var} is not set")
  endif()
endforeach()
string(REPLACE "," ";" topics "${TOPICS}")

function(bracket out value)
  set(${out} "[==[${value}]==]" PARENT_SCOPE)
endfunction()

set(script "")
set(total 0)
bracket(exe "${TEST_EXECUTABLE}")
foreach(topic IN LISTS topics)
  set(file_filter "--source-file=*/unit-${topic}.cpp")
  execute_process(COMMAND "${TEST_EXECUTABLE}" "${file_filter}" --list-test-cases
    OUTPUT_VARIABLE output RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "listing the tests of unit-${topic}.cpp failed (exit ${result}):\n${output}")
  endif()
  # A name with a semicolon would be split into names that match no test case and pass empty.
  if(output MATCHES ";")
    string(REGEX MATCH "[^\n]*;[^\n]*" bad "${output}")
    message(FATAL_ERROR "unit-${topic}.cpp: test case '${bad}' has a ';', which CTest lists cannot hold")
  endif()
  string(REPLACE "\n" ";" lines "${output}")
  set(count 0)
  foreach(line IN LISTS lines)
    if(line STREQUAL "" OR line MATCHES "^=+$" OR line MATCHES "^\\[doctest\\] ")
      continue()
    endif()
    # doctest splits filters at commas; a comma in a name is escaped.
    string(REPLACE "," "\\," case_filter "${line}")
    bracket(name "${topic}: ${line}")
    bracket(case_arg "--test-case=${case_filter}")
    bracket(file_arg "${file_filter}")
    string(APPEND script "add_test(${name} ${exe} ${file_arg} ${case_arg})\n"
      "set_tests_properties(${name} PROPERTIES ENVIRONMENT [==[OMP_NUM_THREADS=1;OMP_WAIT_POLICY=passive]==])\n")
    math(EXPR count "${count} + 1")
  endforeach()
  if(count EQUAL 0)
    message(FATAL_ERROR "unit-${topic}.cpp has no test case the program lists")
  endif()
  math(EXPR total "${total} + ${count}")
endforeach()
file(WRITE "${CTEST_FILE}" "${script}")
message(STATUS "rimc_unit_tests: ${total} test cases")
