# Runs a program and checks how it ends: cmake -DCOMMAND="prog;arg;..." -DEXPECT_EXIT=2
#   -DEXPECT_OUTPUT="text it must print" [-DFORBID_OUTPUT="text it must not print"]
#   -P rimcCheckCommand.cmake
# Fails unless the exit code is EXPECT_EXIT, stdout or stderr contains EXPECT_OUTPUT
# verbatim and, with FORBID_OUTPUT, neither contains that text. Nothing is timed (speed
# belongs in benchmarks): that a bad flag is refused before anything is loaded is checked
# by what the program prints when it starts loading (FORBID_OUTPUT), and that it is
# refused before MPI starts by running it where MPI cannot start (examples/CMakeLists.txt).
execute_process(COMMAND ${COMMAND} RESULT_VARIABLE code OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(all "${out}${err}")
set(problems "")
if(NOT code STREQUAL EXPECT_EXIT)
  string(APPEND problems "exit code ${code}, expected ${EXPECT_EXIT}\n")
endif()
string(FIND "${all}" "${EXPECT_OUTPUT}" at)
if(at EQUAL -1)
  string(APPEND problems "the output lacks: ${EXPECT_OUTPUT}\n")
endif()
if(DEFINED FORBID_OUTPUT AND NOT FORBID_OUTPUT STREQUAL "")
  string(FIND "${all}" "${FORBID_OUTPUT}" at)
  if(NOT at EQUAL -1)
    string(APPEND problems "the output contains: ${FORBID_OUTPUT}\n")
  endif()
endif()
message(STATUS "exit ${code}; output:\n${all}")
if(problems)
  message(FATAL_ERROR "${problems}")
endif()
